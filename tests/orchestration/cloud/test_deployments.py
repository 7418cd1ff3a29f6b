"""The Deployment and ReplicaSet controllers together, on a real API server."""

from __future__ import annotations

from typing import Any

from orbiter.orchestration.client import DEPLOYMENTS, PODS, REPLICASETS, Client
from orbiter.orchestration.cloud import ControllerManager

from .waiting import Kubelet, eventually, is_ready, patch

NS = "default"
REVISION = "deployment.kubernetes.io/revision"


def deployment(
    name: str, replicas: int = 3, image: str = "nginx:1.25", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
            **spec,
        },
    }


async def replicasets_of(client: Client, name: str) -> list[dict[str, Any]]:
    items = (await client.list(REPLICASETS, NS, label_selector=f"app={name}"))["items"]
    return sorted(items, key=lambda rs: int(rs["metadata"]["annotations"][REVISION]))


async def pods_of(client: Client, name: str) -> list[dict[str, Any]]:
    items = (await client.list(PODS, NS, label_selector=f"app={name}"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


Converged = tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]


async def converged(client: Client, name: str, replicas: int) -> Converged:
    """Waits until one replica set serves the current template with ``replicas`` pods:
    the deployment, its replica sets (by revision) and its pods."""

    async def check() -> Converged:
        d = await client.get(DEPLOYMENTS, name, NS)
        rss = await replicasets_of(client, name)
        pods = await pods_of(client, name)
        active = [rs for rs in rss if rs["spec"]["replicas"]]
        assert len(active) == (1 if replicas else 0), rss
        assert len(pods) == replicas, [p["metadata"]["name"] for p in pods]
        status = d.get("status") or {}
        assert status.get("observedGeneration") == d["metadata"]["generation"]
        assert status.get("replicas") == replicas and status.get("updatedReplicas") == replicas
        return d, rss, pods

    return await eventually(check)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


async def test_deployment_makes_one_replicaset_and_its_pods(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(DEPLOYMENTS, deployment("web"), NS)
    d, rss, pods = await converged(client, "web", 3)

    [rs] = rss
    pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{pod_hash}"
    assert rs["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "web",
            "uid": d["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    labels = {"app": "web", "pod-template-hash": pod_hash}
    assert rs["spec"]["selector"]["matchLabels"] == labels
    assert rs["spec"]["template"]["metadata"]["labels"] == labels
    assert rs["metadata"]["labels"] == labels
    assert rs["metadata"]["annotations"][REVISION] == "1"
    assert d["metadata"]["annotations"][REVISION] == "1"
    for pod in pods:
        meta = pod["metadata"]
        assert meta["name"].startswith(f"web-{pod_hash}-")
        assert meta["labels"] == {"app": "web", "pod-template-hash": pod_hash}
        [ref] = meta["ownerReferences"]
        assert ref["kind"] == "ReplicaSet" and ref["name"] == rs["metadata"]["name"]
        assert ref["uid"] == rs["metadata"]["uid"]
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
        assert pod["status"]["phase"] == "Pending"  # no nodes run pods in this milestone

    async def statuses() -> None:
        d = await client.get(DEPLOYMENTS, "web", NS)
        rs = await client.get(REPLICASETS, rss[0]["metadata"]["name"], NS)
        assert rs["status"] == {
            "replicas": 3,
            "fullyLabeledReplicas": 3,
            "readyReplicas": 0,
            "availableReplicas": 0,
            "observedGeneration": rs["metadata"]["generation"],
        }
        s = d["status"]
        assert (s["readyReplicas"], s["availableReplicas"], s["unavailableReplicas"]) == (0, 0, 3)
        assert condition(d, "Available")["status"] == "False"
        assert condition(d, "Progressing")["status"] == "True"

    await eventually(statuses)


async def test_scaling_changes_the_current_replicaset(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(DEPLOYMENTS, deployment("web", replicas=3), NS)
    _, [rs], _ = await converged(client, "web", 3)
    for replicas in (5, 1, 0, 2):
        await patch(client, DEPLOYMENTS, "web", {"spec": {"replicas": replicas}}, NS)
        _, rss, _ = await converged(client, "web", replicas)
        assert [r["metadata"]["uid"] for r in rss] == [rs["metadata"]["uid"]]
        assert rss[0]["spec"]["replicas"] == replicas


async def test_rolling_update_moves_pods_to_a_new_replicaset(
    client: Client, controllers: ControllerManager
) -> None:
    async with Kubelet(client, NS):
        await client.create(DEPLOYMENTS, deployment("web", replicas=3), NS)

        async def available(image: str) -> dict[str, Any]:
            d = await client.get(DEPLOYMENTS, "web", NS)
            s = d.get("status") or {}
            assert s.get("observedGeneration") == d["metadata"]["generation"]
            assert (s.get("updatedReplicas"), s.get("availableReplicas")) == (3, 3), s
            assert (s.get("replicas"), s.get("readyReplicas"), s.get("unavailableReplicas")) == (
                3,
                3,
                0,
            )
            pods = await pods_of(client, "web")
            assert len(pods) == 3 and all(is_ready(p) for p in pods)
            assert {p["spec"]["containers"][0]["image"] for p in pods} == {image}
            assert condition(d, "Available")["status"] == "True"
            assert condition(d, "Progressing")["reason"] == "NewReplicaSetAvailable"
            return d

        await eventually(lambda: available("nginx:1.25"))
        [old] = await replicasets_of(client, "web")
        template = {"spec": {"containers": [{"name": "main", "image": "nginx:1.26"}]}}
        body = {"spec": {"template": template}}
        await patch(client, DEPLOYMENTS, "web", body, NS, patch_type="strategic")
        d = await eventually(lambda: available("nginx:1.26"))

        rss = await replicasets_of(client, "web")
        assert rss[0]["metadata"]["uid"] == old["metadata"]["uid"]
        assert [rs["spec"]["replicas"] for rs in rss] == [0, 3]
        assert rss[1]["metadata"]["annotations"][REVISION] == "2"
        assert d["metadata"]["annotations"][REVISION] == "2"
        new_hash = rss[1]["metadata"]["labels"]["pod-template-hash"]
        assert new_hash != old["metadata"]["labels"]["pod-template-hash"]
        pods = await pods_of(client, "web")
        assert {p["metadata"]["labels"]["pod-template-hash"] for p in pods} == {new_hash}


async def test_recreate_scales_the_old_replicaset_down_first(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(DEPLOYMENTS, deployment("job", strategy={"type": "Recreate"}), NS)
    _, [old], _ = await converged(client, "job", 3)
    template = deployment("job", image="busybox:1.36")["spec"]["template"]
    await patch(client, DEPLOYMENTS, "job", {"spec": {"template": template}}, NS)

    async def rolled() -> list[dict[str, Any]]:
        rss = await replicasets_of(client, "job")
        assert [rs["spec"]["replicas"] for rs in rss] == [0, 3]
        assert [rs.get("status", {}).get("replicas") for rs in rss] == [0, 3]
        return rss

    rss = await eventually(rolled)
    assert rss[0]["metadata"]["uid"] == old["metadata"]["uid"]
    _, _, pods = await converged(client, "job", 3)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"busybox:1.36"}


async def test_rollback_reuses_the_old_replicaset_and_history_is_pruned(
    client: Client, controllers: ControllerManager
) -> None:
    spec = {"strategy": {"type": "Recreate"}, "revisionHistoryLimit": 1}
    await client.create(DEPLOYMENTS, deployment("app", replicas=2, image="app:1", **spec), NS)
    await converged(client, "app", 2)
    for image in ("app:2", "app:3", "app:1"):
        template = deployment("app", image=image)["spec"]["template"]
        await patch(client, DEPLOYMENTS, "app", {"spec": {"template": template}}, NS)
        _, _, pods = await converged(client, "app", 2)
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {image}

    async def pruned() -> list[dict[str, Any]]:
        rss = await replicasets_of(client, "app")
        assert len(rss) == 2, [rs["metadata"]["name"] for rs in rss]  # current + 1 of history
        return rss

    rss = await eventually(pruned)
    # app:1 came back: its replica set was re-used with the newest revision.
    images = [rs["spec"]["template"]["spec"]["containers"][0]["image"] for rs in rss]
    assert images == ["app:3", "app:1"]
    assert [rs["metadata"]["annotations"][REVISION] for rs in rss] == ["3", "4"]


async def test_a_paused_deployment_does_not_roll_out(
    client: Client, controllers: ControllerManager
) -> None:
    await client.create(DEPLOYMENTS, deployment("web", replicas=2), NS)
    _, [rs], _ = await converged(client, "web", 2)
    template = deployment("web", image="nginx:2")["spec"]["template"]
    await patch(client, DEPLOYMENTS, "web", {"spec": {"paused": True}}, NS)
    await patch(client, DEPLOYMENTS, "web", {"spec": {"template": template}}, NS)

    async def paused() -> None:
        d = await client.get(DEPLOYMENTS, "web", NS)
        assert d["status"]["observedGeneration"] == d["metadata"]["generation"]
        assert condition(d, "Progressing")["reason"] == "DeploymentPaused"

    await eventually(paused)
    rss = await replicasets_of(client, "web")
    assert [r["metadata"]["uid"] for r in rss] == [rs["metadata"]["uid"]]

    # Pods never become ready here, and with the default maxUnavailable (0 of 2 pods) no
    # old pod could go: allow them all to be unavailable.
    strategy = {"rollingUpdate": {"maxUnavailable": "100%"}}
    await patch(client, DEPLOYMENTS, "web", {"spec": {"strategy": strategy}}, NS)
    await patch(client, DEPLOYMENTS, "web", {"spec": {"paused": False}}, NS)

    async def resumed() -> None:
        pods = await pods_of(client, "web")
        assert len(pods) == 2
        assert {p["spec"]["containers"][0]["image"] for p in pods} == {"nginx:2"}
        rss = await replicasets_of(client, "web")
        assert [r["spec"]["replicas"] for r in rss] == [0, 2]

    await eventually(resumed)
