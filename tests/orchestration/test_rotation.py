"""Certificate rotation end to end: a node whose certificates live three seconds renews them
over and over while the cloud keeps delivering, and loses or repeats nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orbiter.orchestration.client import CONFIGMAPS, NODES, PODS
from orbiter.orchestration.edge.joining import NodeCredentials

from orbiter.testing import Cluster, node_ready

NS = "default"
WAIT = 60.0
LIFETIME = 3.0  # seconds: a rotation every 2.1-2.7 s


def reader_pod() -> dict[str, Any]:
    """A pod on the node that mounts the ConfigMap, so the cloud sends it there."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reader", "namespace": NS},
        "spec": {
            "nodeName": "edge-0",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": "python",
                    "command": ["python", "-c", "import time; time.sleep(600)"],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}],
                }
            ],
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
        },
    }


async def test_rotation_under_load_keeps_every_delivery_once_and_in_order(
    tmp_path: Path,
) -> None:
    async with Cluster(tmp_path, edges=1, node_cert_days=LIFETIME / 86400) as cluster:
        client, edge = cluster.client, cluster.edges[0]
        joined_serial = edge.credentials.cert.serial_number
        await client.create(CONFIGMAPS, {"metadata": {"name": "cfg"}, "data": {"v": "0"}}, NS)
        await client.create(PODS, reader_pod(), NS)

        applied: list[int] = []  # every version of cfg the node's store committed, in order
        changed = asyncio.Condition()

        async def record() -> None:
            async for change in edge.meta.watch("configmap", NS):
                if change.name == "cfg":
                    async with changed:
                        applied.append(int(change.object["data"]["v"]))
                        changed.notify_all()

        serials = {joined_serial}
        recorder = asyncio.create_task(record())
        try:
            async with asyncio.timeout(WAIT):
                async with changed:
                    await changed.wait_for(lambda: 0 in applied)
                pid = await running_pid(cluster)
                version = 0
                # One version at a time, the next once the node has it: every one must land.
                while len(serials) < 3:  # the joined certificate and two renewals
                    version += 1
                    await client.patch(CONFIGMAPS, "cfg", {"data": {"v": str(version)}}, NS)
                    async with changed:
                        await changed.wait_for(lambda v=version: applied[-1] == v)
                    serials.add(edge.credentials.cert.serial_number)
                # The session the cloud holds now was opened with the newest certificate.
                current = edge.credentials.cert.serial_number
                while True:
                    if serial_of(cluster) == current:
                        break
                    await asyncio.sleep(0.05)  # polling a reconnect: no event to await
        finally:
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)

        assert applied == list(range(version + 1))  # each version once, in order, none lost
        # What the node's data dir holds is the renewed identity, still this node's.
        on_disk = NodeCredentials.load(cluster.edge_dir(0))
        assert on_disk.cert.serial_number == current != joined_serial
        assert on_disk.node_name == "edge-0"
        node = await client.get(NODES, "edge-0")
        assert node_ready(node)
        assert await running_pid(cluster) == pid  # the pod was never restarted


async def running_pid(cluster: Cluster) -> int:
    """The reader's container process id (``process://<pid>``), once it runs."""
    while True:
        pod = await cluster.client.get(PODS, "reader", NS)
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if statuses and "running" in (statuses[0].get("state") or {}):
            return int(statuses[0]["containerID"].removeprefix("process://"))
        await asyncio.sleep(0.05)  # polling a converging system: no event to await


def serial_of(cluster: Cluster) -> int | None:
    hub = cluster.cloud.hub
    assert hub is not None
    cert = hub.peer_certificate("edge-0")
    return int(cert["serialNumber"], 16) if cert else None
