"""The ReplicaSet controller alone: counts, adoption, release, status."""

from __future__ import annotations

import asyncio
from typing import Any

from orbiter.orchestration.client import PODS, REPLICASETS, Client
from orbiter.orchestration.cloud import ControllerManager

from .waiting import Kubelet, eventually, patch

NS = "default"


def replicaset(name: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "tier": "x"}},
                "spec": {"containers": [{"name": "main", "image": "nginx:1.25"}]},
            },
            **spec,
        },
    }


def orphan_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "nginx:1.25"}]},
    }


async def owned_pods(client: Client, rs: dict[str, Any]) -> list[dict[str, Any]]:
    uid = rs["metadata"]["uid"]
    items = (await client.list(PODS, NS))["items"]
    return [
        p
        for p in items
        if any(r["uid"] == uid for r in p["metadata"].get("ownerReferences") or [])
        and not p["metadata"].get("deletionTimestamp")
    ]


async def test_adopts_orphans_creates_the_rest_and_releases_mismatches(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(PODS, orphan_pod("stray", {"app": "cache"}), NS)
    await client.create(PODS, orphan_pod("other", {"app": "elsewhere"}), NS)
    rs = await client.create(REPLICASETS, replicaset("cache", 3), NS)

    async def three() -> list[dict[str, Any]]:
        pods = await owned_pods(client, rs)
        assert len(pods) == 3
        return pods

    pods = await eventually(three)
    names = {p["metadata"]["name"] for p in pods}
    assert "stray" in names  # adopted rather than replaced
    new = [p for p in pods if p["metadata"]["name"] != "stray"]
    assert all(p["metadata"]["generateName"] == "cache-" for p in new)
    assert all(p["metadata"]["labels"] == {"app": "cache", "tier": "x"} for p in new)
    other = await client.get(PODS, "other", NS)
    assert not other["metadata"].get("ownerReferences")

    # A pod relabelled out of the selector is released and replaced.
    victim = new[0]["metadata"]["name"]
    await patch(client, PODS, victim, {"metadata": {"labels": {"app": "debug"}}}, NS)

    async def released() -> None:
        pod = await client.get(PODS, victim, NS)
        assert not pod["metadata"].get("ownerReferences")
        pods = await owned_pods(client, rs)
        assert len(pods) == 3 and victim not in {p["metadata"]["name"] for p in pods}

    await eventually(released)


async def test_scale_down_prefers_pods_that_are_not_ready(
    client: Client, controllers: ControllerManager
) -> None:
    async with Kubelet(client, NS):
        rs = await client.create(REPLICASETS, replicaset("web", 2), NS)

        async def ready(n: int) -> None:
            got = await client.get(REPLICASETS, "web", NS)
            assert got.get("status", {}).get("readyReplicas") == n
            assert got["status"]["availableReplicas"] == n

        await eventually(lambda: ready(2))
    ready_names = {p["metadata"]["name"] for p in await owned_pods(client, rs)}
    await patch(client, REPLICASETS, "web", {"spec": {"replicas": 4}}, NS)

    async def four() -> None:
        assert len(await owned_pods(client, rs)) == 4

    await eventually(four)
    await patch(client, REPLICASETS, "web", {"spec": {"replicas": 2}}, NS)

    async def kept_the_ready_ones() -> None:
        pods = await owned_pods(client, rs)
        assert {p["metadata"]["name"] for p in pods} == ready_names
        got = await client.get(REPLICASETS, "web", NS)
        assert got["status"]["replicas"] == 2
        assert got["status"]["observedGeneration"] == got["metadata"]["generation"]

    await eventually(kept_the_ready_ones)


async def test_replaces_deleted_pods(client: Client, controllers: ControllerManager) -> None:
    rs = await client.create(REPLICASETS, replicaset("web", 2), NS)

    async def two() -> list[dict[str, Any]]:
        pods = await owned_pods(client, rs)
        assert len(pods) == 2
        return pods

    first = await eventually(two)
    await client.delete(PODS, first[0]["metadata"]["name"], NS)

    async def replaced() -> None:
        pods = await two()
        assert first[0]["metadata"]["name"] not in {p["metadata"]["name"] for p in pods}

    await eventually(replaced)


async def test_a_lagging_cache_never_makes_it_create_too_many(
    client: Client, controllers: ControllerManager
) -> None:
    listed = await client.list(PODS, NS)
    events: list[tuple[str, str]] = []

    async def follow() -> None:
        rv = listed["metadata"]["resourceVersion"]
        async for event in client.watch(PODS, NS, resource_version=rv):
            events.append((event["type"], event["object"]["metadata"]["name"]))

    watcher = asyncio.create_task(follow())
    try:
        rs = await client.create(REPLICASETS, replicaset("many", 40), NS)

        async def forty() -> None:
            assert len(await owned_pods(client, rs)) == 40
            got = await client.get(REPLICASETS, "many", NS)
            assert got.get("status", {}).get("replicas") == 40

        await eventually(forty)
        await patch(client, REPLICASETS, "many", {"spec": {"replicas": 15}}, NS)

        async def fifteen() -> None:
            assert len(await owned_pods(client, rs)) == 15
            assert sum(1 for kind, _ in events if kind == "DELETED") == 25

        await eventually(fifteen)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    # Every pod made was wanted, and exactly the surplus went.
    assert sum(1 for kind, _ in events if kind == "ADDED") == 40
    assert sum(1 for kind, _ in events if kind == "DELETED") == 25
