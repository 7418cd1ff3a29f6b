"""A CRD's life: served at once when created, its objects gone with it when deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from orbiter.orchestration.apiserver import APIError, APIServer

CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.io"},
    "spec": {
        "group": "example.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": {"type": "object", "properties": {}}},
                    }
                },
            }
        ],
    },
}


async def test_deleting_a_crd_stops_serving_it_and_removes_its_objects(tmp_path: Path) -> None:
    async with APIServer(tmp_path, port=0) as server:
        api = server.api
        crd_rt = api.registry.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert crd_rt is not None
        await api.create(crd_rt, "", CRD)
        widgets = api.registry.lookup("example.io", "v1", "widgets")
        assert widgets is not None
        for name in ("a", "b"):
            await api.create(widgets, "default", {"metadata": {"name": name}, "spec": {}})

        await api.delete(crd_rt, "", "widgets.example.io")

        assert api.registry.lookup("example.io", "v1", "widgets") is None
        listed = await server.store.list("/registry/example.io/widgets/")  # type: ignore[union-attr]
        assert listed.kvs == []
        # The same CRD made again starts empty.
        await api.create(crd_rt, "", CRD)
        again = api.registry.lookup("example.io", "v1", "widgets")
        assert again is not None
        assert (await api.list(again, "default"))["items"] == []
        with pytest.raises(APIError) as info:
            await api.get(again, "default", "a")
        assert info.value.code == 404
