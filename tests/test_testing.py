"""``orbiter.testing.Cluster``: a cloud and real edge nodes in one process, for users' tests."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from orbiter.orchestration.client import DEPLOYMENTS, NODES, PODS

from orbiter.testing import Cluster, ClusterThread, node_ready

from .converging import until as eventually

WAIT = 60.0
NS = "default"


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "sleeper"}},
            "template": {
                "metadata": {"labels": {"app": "sleeper"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "main",
                            "image": "python",
                            "command": ["python", "-c", "import time; time.sleep(600)"],
                        }
                    ],
                },
            },
        },
    }


def pid_of(pod: dict[str, Any]) -> int:
    """The container's pid, from the ``process://<pid>`` container ID the node reports."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return int(statuses[0]["containerID"].removeprefix("process://"))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_deployment_spreads_over_two_nodes_and_stops_with_them(tmp_path: Path) -> None:
    async with Cluster(tmp_path, edges=2) as cluster:
        await cluster.wait_ready(WAIT)
        assert [e.node_name for e in cluster.edges] == ["edge-0", "edge-1"]
        client = cluster.client
        await client.create(DEPLOYMENTS, deployment(3), NS)

        async def running(count: int) -> list[dict[str, Any]] | None:
            pods = (await client.list(PODS, NS, label_selector="app=sleeper"))["items"]
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            ok = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
            return ok if len(ok) == count and len(live) == count else None

        async def processes(*counts: int) -> bool:
            return [len(e.runtime.running_pods()) for e in cluster.edges] == list(counts)

        pods = await eventually(lambda: running(3), "three pods Running")
        on = sorted(p["spec"]["nodeName"] for p in pods)
        assert set(on) == {"edge-0", "edge-1"}, "the scheduler spreads the replicas"
        per_node = [on.count("edge-0"), on.count("edge-1")]
        await eventually(lambda: processes(*per_node), "each node runs its pods")
        pids = [pid_of(p) for p in pods]
        assert all(alive(pid) for pid in pids)

        await client.patch(DEPLOYMENTS, "sleeper", {"spec": {"replicas": 1}}, NS)
        (last,) = await eventually(lambda: running(1), "one pod left")
        await eventually(
            lambda: processes(*(int(last["spec"]["nodeName"] == n) for n in ["edge-0", "edge-1"])),
            "the nodes run one pod between them",
        )
        await eventually(_async(lambda: sum(alive(p) for p in pids) == 1), "two processes are gone")

        await client.delete(DEPLOYMENTS, "sleeper", NS)
        await eventually(lambda: processes(0, 0), "no pod runs after the delete")
        await eventually(_async(lambda: not any(alive(p) for p in pids)), "all processes gone")


async def test_a_restarted_node_keeps_its_pods_and_exit_stops_them(tmp_path: Path) -> None:
    async with Cluster(tmp_path, edges=1) as cluster:
        await cluster.wait_ready(WAIT)
        client = cluster.client
        await client.create(DEPLOYMENTS, deployment(1), NS)

        async def running_pod() -> dict[str, Any] | None:
            pods = (await client.list(PODS, NS, label_selector="app=sleeper"))["items"]
            ok = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            return ok[0] if len(pods) == 1 and ok else None

        pid = pid_of(await eventually(running_pod, "the pod Running"))
        old = cluster.edges[0]

        await cluster.stop_edge(0)
        assert alive(pid), "a stopped node leaves its pods running"
        edge = await cluster.start_edge(0)
        assert edge is cluster.edges[0] and edge is not old
        (uid,) = edge.runtime.running_pods()
        assert pid_of({"status": edge.runtime.pod_status(uid)}) == pid, "adopted, not restarted"
        assert alive(pid)
        await cluster.wait_ready(WAIT)

        # Stopped again: leaving the block must still stop its pod.
        await cluster.stop_edge(0)
    assert not alive(pid)
    with pytest.raises(RuntimeError):
        _ = cluster.client


def test_cluster_thread_serves_blocking_clients(tmp_path: Path) -> None:
    with ClusterThread(tmp_path, edges=1) as cluster:
        cluster.wait_ready(WAIT)
        nodes = cluster.call(cluster.cluster.client.list(NODES))["items"]
        assert [n["metadata"]["name"] for n in nodes if node_ready(n)] == ["edge-0"]
        out = subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--cache-dir",
                str(tmp_path / "kube-cache"),
                "get",
                "nodes",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=WAIT,
        )
        assert out.stdout.split() == ["node/edge-0"]


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run
