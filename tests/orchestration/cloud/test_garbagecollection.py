"""Owner references: background, foreground and orphan deletion, custom resources."""

from __future__ import annotations

from typing import Any

from orbiter.orchestration.client import (
    CONFIGMAPS,
    CRDS,
    DEPLOYMENTS,
    PODS,
    REPLICASETS,
    Client,
    NotFoundError,
    Resource,
)
from orbiter.orchestration.cloud import Controller, ControllerManager, Informers

from .test_deployments import converged, deployment
from .waiting import DeletionLog, eventually

NS = "default"
WIDGETS = Resource("example.com", "v1", "widgets", "Widget")


async def gone(client: Client, res: Resource, name: str, namespace: str | None = NS) -> None:
    try:
        obj = await client.get(res, name, namespace)
    except NotFoundError:
        return
    raise AssertionError(f"{res.plural}/{name} still there: {obj['metadata']}")


async def count(client: Client, res: Resource, namespace: str = NS) -> int:
    return len((await client.list(res, namespace))["items"])


def widget_crd(scope: str = "Namespaced") -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": scope,
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def ref(owner: dict[str, Any], block: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": block,
    }


async def test_background_deletion_removes_replicasets_and_pods(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(DEPLOYMENTS, deployment("web"), NS)
    await converged(client, "web", 3)
    await client.delete(DEPLOYMENTS, "web", NS, propagation_policy="Background")

    async def empty() -> None:
        await gone(client, DEPLOYMENTS, "web")
        assert await count(client, REPLICASETS) == 0
        assert await count(client, PODS) == 0

    await eventually(empty)


async def test_foreground_deletion_removes_dependents_before_the_owner(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(DEPLOYMENTS, deployment("web"), NS)
    _, [rs], pods = await converged(client, "web", 3)
    async with DeletionLog(client, NS, [DEPLOYMENTS, REPLICASETS, PODS]) as log:
        deleting = await client.delete(DEPLOYMENTS, "web", NS, propagation_policy="Foreground")
        assert "foregroundDeletion" in deleting["metadata"]["finalizers"]

        async def deleted() -> None:
            assert ("deployments", "web") in log.deleted

        await eventually(deleted)
    owner_gone = log.deleted[("deployments", "web")]
    dependents = [("replicasets", rs["metadata"]["name"])]
    dependents += [("pods", p["metadata"]["name"]) for p in pods]
    for key in dependents:
        assert key in log.deleted and log.deleted[key] < owner_gone, (key, log.deleted)
    assert await count(client, PODS) == 0


async def test_orphan_deletion_keeps_dependents_without_references(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(DEPLOYMENTS, deployment("web"), NS)
    _, [rs], pods = await converged(client, "web", 3)

    # Orphaning the deployment leaves its replica set (and so the pods) in place.
    await client.delete(DEPLOYMENTS, "web", NS, propagation_policy="Orphan")
    await eventually(lambda: gone(client, DEPLOYMENTS, "web"))
    kept = await client.get(REPLICASETS, rs["metadata"]["name"], NS)
    assert kept["metadata"]["uid"] == rs["metadata"]["uid"]
    assert not kept["metadata"].get("ownerReferences")

    # Orphaning the replica set leaves the pods, no longer owned by anything.
    await client.delete(REPLICASETS, rs["metadata"]["name"], NS, propagation_policy="Orphan")
    await eventually(lambda: gone(client, REPLICASETS, rs["metadata"]["name"]))
    left = (await client.list(PODS, NS))["items"]
    assert {p["metadata"]["uid"] for p in left} == {p["metadata"]["uid"] for p in pods}
    assert all(not p["metadata"].get("ownerReferences") for p in left)
    assert all(not p["metadata"].get("deletionTimestamp") for p in left)


async def test_dependents_of_a_missing_owner_go_but_other_owners_keep_them(
    client: Client, controllers: ControllerManager
) -> None:
    owner = await client.create(CONFIGMAPS, {"metadata": {"name": "owner"}}, NS)
    keeper = await client.create(CONFIGMAPS, {"metadata": {"name": "keeper"}}, NS)
    dangling = dict(ref(owner), uid="00000000-0000-0000-0000-000000000000")
    await client.create(
        CONFIGMAPS, {"metadata": {"name": "stale", "ownerReferences": [dangling]}}, NS
    )
    shared = {"metadata": {"name": "shared", "ownerReferences": [ref(owner), ref(keeper)]}}
    await client.create(CONFIGMAPS, shared, NS)
    await eventually(lambda: gone(client, CONFIGMAPS, "stale"))  # its owner uid never existed

    await client.delete(CONFIGMAPS, "owner", NS)

    async def released() -> None:
        shared = await client.get(CONFIGMAPS, "shared", NS)
        uids = [r["uid"] for r in shared["metadata"]["ownerReferences"]]
        assert uids == [keeper["metadata"]["uid"]]

    await eventually(released)
    await client.delete(CONFIGMAPS, "keeper", NS)
    await eventually(lambda: gone(client, CONFIGMAPS, "shared"))


async def test_custom_resources_as_dependents_and_owners(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(CRDS, widget_crd())
    owner = await client.create(CONFIGMAPS, {"metadata": {"name": "owner"}}, NS)
    widget = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "ownerReferences": [ref(owner)]},
        "spec": {"size": 1},
    }
    parent = await client.create(WIDGETS, widget, NS)
    child = {"metadata": {"name": "child", "ownerReferences": [ref(parent, block=True)]}}
    await client.create(CONFIGMAPS, child, NS)

    # Foreground on the configmap: the widget goes first, and with it its own dependent.
    await client.delete(CONFIGMAPS, "owner", NS, propagation_policy="Foreground")

    async def all_gone() -> None:
        await gone(client, CONFIGMAPS, "owner")
        await gone(client, WIDGETS, "w")
        await gone(client, CONFIGMAPS, "child")

    await eventually(all_gone)


class _WidgetWatcher(Controller[str]):
    """A controller of a higher layer (as ``ControllerManager(extra=...)`` runs them) that
    watches a custom kind through the shared informers before the collector sees its CRD."""

    def __init__(self, client: Client, informers: Informers) -> None:
        super().__init__(client, informers, resync=None)
        informers(WIDGETS)

    def keys(self) -> list[str]:
        return []

    async def reconcile(self, key: str) -> float | None:
        return None


async def test_custom_owners_whose_informer_another_controller_shares(client: Client) -> None:
    await client.create(CRDS, widget_crd())
    before = await client.create(WIDGETS, {"metadata": {"name": "before"}, "spec": {}}, NS)
    child = {"metadata": {"name": "child-of-before", "ownerReferences": [ref(before)]}}
    await client.create(CONFIGMAPS, child, NS)
    async with ControllerManager(client, resync=None, extra=[_WidgetWatcher]) as manager:
        assert any(isinstance(c, _WidgetWatcher) for c in manager.controllers)
        # Listed by the shared informer before the collector hooked it: known all the same.
        await client.delete(WIDGETS, "before", NS)
        await eventually(lambda: gone(client, CONFIGMAPS, "child-of-before"))

        after = await client.create(WIDGETS, {"metadata": {"name": "after"}, "spec": {}}, NS)
        child = {"metadata": {"name": "child-of-after", "ownerReferences": [ref(after)]}}
        await client.create(CONFIGMAPS, child, NS)
        await client.delete(WIDGETS, "after", NS)
        await eventually(lambda: gone(client, CONFIGMAPS, "child-of-after"))

    # Only the extra controllers: the collector is not there to remove this one.
    kept = await client.create(WIDGETS, {"metadata": {"name": "kept"}, "spec": {}}, NS)
    child = {"metadata": {"name": "child-of-kept", "ownerReferences": [ref(kept)]}}
    await client.create(CONFIGMAPS, child, NS)
    async with ControllerManager(
        client, resync=None, extra=[_WidgetWatcher], builtin=False
    ) as manager:
        assert [type(c) for c in manager.controllers] == [_WidgetWatcher]
