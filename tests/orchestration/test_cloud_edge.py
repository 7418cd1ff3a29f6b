"""The whole path: a node joins with a token, a Deployment's pods run on it as processes,
their status comes back to the API, and scaling down and deleting stop the processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from orbiter.orchestration.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NODES,
    PODS,
    LocalClient,
    NotFoundError,
)
from orbiter.orchestration.cloud.joining import create_join_token
from orbiter.orchestration.cloud.nodereports import NodeReports
from orbiter.orchestration.cloud.running import Cloud
from orbiter.orchestration.edge.core import EdgeCore
from orbiter.orchestration.edge.joining import join
from orbiter.orchestration.protocol import Message

from ..converging import until as eventually

WAIT = 60.0
NS = "default"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Cloud, EdgeCore, LocalClient]]:
    cloud = Cloud(
        tmp_path / "cloud", port=0, hub_port=0, join_port=0, router_port=0, sync_period=0.5
    )
    await cloud.start()
    edge: EdgeCore | None = None
    try:
        assert cloud.join is not None and cloud.hub is not None
        token = create_join_token(cloud.server.data_dir, 600)
        await join(f"127.0.0.1:{cloud.join.port}", token, "edge-1", tmp_path / "edge")
        edge = EdgeCore(
            tmp_path / "edge",
            cloud_url=f"wss://127.0.0.1:{cloud.hub.port}",
            metaserver_port=0,
            mqtt_port=0,
            heartbeat=1.0,
            status_interval=0.5,
        )
        await edge.start()
        async with LocalClient(cloud.server.api) as client:
            yield cloud, edge, client
    finally:
        if edge is not None:
            await edge.shutdown(0)
        await cloud.stop()


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
                            "env": [
                                {
                                    "name": "GREETING",
                                    "valueFrom": {
                                        "configMapKeyRef": {"name": "greeting", "key": "text"}
                                    },
                                }
                            ],
                        }
                    ],
                },
            },
        },
    }


async def test_a_deployment_runs_on_a_joined_edge_node(
    cluster: tuple[Cloud, EdgeCore, LocalClient],
) -> None:
    _, edge, client = cluster

    async def node_ready() -> bool:
        try:
            node = await client.get(NODES, "edge-1")
        except NotFoundError:
            return False
        conditions = (node.get("status") or {}).get("conditions") or []
        labels = node["metadata"].get("labels") or {}
        return "node-role.kubernetes.io/edge" in labels and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
        )

    await eventually(node_ready, "the node registers and reports Ready")

    await client.create(
        CONFIGMAPS, {"metadata": {"name": "greeting"}, "data": {"text": "hello"}}, NS
    )
    await client.create(DEPLOYMENTS, deployment(2), NS)

    async def running(count: int) -> list[dict[str, Any]] | None:
        pods = (await client.list(PODS, NS, label_selector="app=sleeper"))["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        ok = [p for p in live if (p.get("status") or {}).get("phase") == "Running"]
        return ok if len(ok) == count and len(live) == count else None

    pods = await eventually(lambda: running(2), "two pods Running")
    assert {p["spec"]["nodeName"] for p in pods} == {"edge-1"}
    assert len(edge.runtime.running_pods()) == 2

    await client.patch(DEPLOYMENTS, "sleeper", {"spec": {"replicas": 1}}, NS)
    await eventually(lambda: running(1), "one pod left")

    async def processes(count: int) -> bool:
        return len(edge.runtime.running_pods()) == count

    await eventually(lambda: processes(1), "the runtime runs one pod")

    await client.delete(DEPLOYMENTS, "sleeper", NS)
    await eventually(lambda: processes(0), "no pod runs after the delete")


async def test_a_node_may_only_report_for_itself(tmp_path: Path) -> None:
    async with Cloud(tmp_path, port=0, hub_port=0, join_port=0, router_port=0) as cloud:
        reports = NodeReports(LocalClient(cloud.server.api))
        status = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        other = Message("edged", "resource", "patch", "null/nodestatus/edge-2", status)
        reply = await reports.handle("edge-1", other)
        assert reply.operation == "error" and "forbidden" in str(reply.content)
        lease = Message("edged", "resource", "update", "kube-node-lease/lease/edge-2", {})
        assert (await reports.handle("edge-1", lease)).operation == "error"
        # Its Lease lives in kube-node-lease only.
        stray = Message("edged", "resource", "update", "default/lease/edge-1", {"spec": {}})
        assert (await reports.handle("edge-1", stray)).operation == "error"
        # It may not give itself roles or restricted labels, nor taints.
        node = {
            "metadata": {
                "labels": {
                    "zone": "north",
                    "node-role.kubernetes.io/control-plane": "",
                    "node-restriction.kubernetes.io/pool": "gpu",
                }
            },
            "spec": {"unschedulable": True},
        }
        register = Message("edged", "resource", "insert", "null/node/edge-1", node)
        assert (await reports.handle("edge-1", register)).operation == "response"
        stored = await LocalClient(cloud.server.api).get(NODES, "edge-1")
        assert stored["metadata"]["labels"] == {
            "zone": "north",
            "node-role.kubernetes.io/edge": "",
            "node-role.kubernetes.io/agent": "",
        }
        assert not stored["spec"].get("unschedulable")
        junk = Message("edged", "resource", "insert", "null/node/edge-1", "not an object")
        assert "bad request" in str((await reports.handle("edge-1", junk)).content)
        with pytest.raises(NotFoundError):
            await LocalClient(cloud.server.api).get(NODES, "edge-2")
