"""Namespace termination and default service accounts."""

from __future__ import annotations

import functools
from typing import Any

from orbiter.orchestration.client import (
    CONFIGMAPS,
    CRDS,
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    SERVICEACCOUNTS,
    Client,
    ClientError,
    NotFoundError,
)
from orbiter.orchestration.cloud import ControllerManager

from .test_deployments import deployment
from .test_garbagecollection import WIDGETS, gone, widget_crd
from .waiting import eventually, patch


async def test_every_namespace_gets_a_default_serviceaccount(
    client: Client, controllers: ControllerManager
) -> None:
    async def has_default(ns: str) -> dict[str, Any]:
        sa = await client.get(SERVICEACCOUNTS, "default", ns)
        meta: dict[str, Any] = sa["metadata"]
        return meta

    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        await eventually(functools.partial(has_default, ns))
    await client.create(NAMESPACES, {"metadata": {"name": "team-a"}})
    first = await eventually(lambda: has_default("team-a"))

    await client.delete(SERVICEACCOUNTS, "default", "team-a")

    async def recreated() -> None:
        again = await has_default("team-a")
        assert again["uid"] != first["uid"]

    await eventually(recreated)


async def test_deleting_a_namespace_deletes_its_contents_then_itself(
    client: Client, controllers: ControllerManager
) -> None:
    ns = "doomed"
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    await client.create(CRDS, widget_crd())
    await client.create(CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"a": "1"}}, ns)
    held = {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    await client.create(CONFIGMAPS, held, ns)
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    await client.create(WIDGETS, widget, ns)
    d = deployment("web", replicas=2)
    d["metadata"]["namespace"] = ns
    await client.create(DEPLOYMENTS, d, ns)

    async def running() -> None:
        assert len((await client.list(PODS, ns))["items"]) == 2
        await client.get(SERVICEACCOUNTS, "default", ns)

    await eventually(running)
    await client.delete(NAMESPACES, ns)
    terminating = await client.get(NAMESPACES, ns)
    assert terminating["status"]["phase"] == "Terminating"

    async def emptied_but_held() -> None:
        for res in (PODS, DEPLOYMENTS, WIDGETS, SERVICEACCOUNTS):
            assert (await client.list(res, ns))["items"] == [], res.plural
        [cm] = (await client.list(CONFIGMAPS, ns))["items"]
        assert cm["metadata"]["name"] == "held" and cm["metadata"]["deletionTimestamp"]

    await eventually(emptied_but_held)
    # The namespace waits for the object its finalizer holds.
    assert (await client.get(NAMESPACES, ns))["spec"]["finalizers"] == ["kubernetes"]
    await patch(client, CONFIGMAPS, "held", {"metadata": {"finalizers": None}}, ns)
    await eventually(lambda: gone(client, NAMESPACES, ns, None))

    # The name is free again, for a fresh namespace.
    await client.create(NAMESPACES, {"metadata": {"name": ns}})
    try:
        await client.get(CONFIGMAPS, "settings", ns)
    except NotFoundError:
        pass
    else:
        raise AssertionError("the old namespace's configmap came back")


async def test_nothing_new_can_be_created_in_a_terminating_namespace(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(NAMESPACES, {"metadata": {"name": "closing"}})
    held = {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    await client.create(CONFIGMAPS, held, "closing")
    await client.delete(NAMESPACES, "closing")
    try:
        await client.create(CONFIGMAPS, {"metadata": {"name": "late"}}, "closing")
    except ClientError as exc:
        assert exc.status == 403
    else:
        raise AssertionError("created in a terminating namespace")
    await patch(client, CONFIGMAPS, "held", {"metadata": {"finalizers": None}}, "closing")
    await eventually(lambda: gone(client, NAMESPACES, "closing", None))
