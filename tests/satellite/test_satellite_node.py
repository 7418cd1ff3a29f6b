"""A satellite node end to end: the production hubs through the contact proxy.

The node is an ordinary EdgeCore dialling an ordinary CloudHub, except that its TCP link runs
through ``ContactProxy``, which opens only in the windows of a compressed contact plan
(passes of a few seconds, acquisition included) and shapes each direction to the pass's
rates. Between passes the node runs on its own; what it reports waits in its spool and goes
down in the next pass, and a model goes up in chunks that resume across passes.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from orbiter.orchestration.client import PODS
from orbiter.orchestration.edge.extensions import EdgeContext
from orbiter.orchestration.protocol.transfers import build_manifest
from orbiter.satellite.contacts import Contact, ContactPlan
from orbiter.satellite.link import GilbertElliott, LinkConfig, LinkModel
from orbiter.satellite.proxy import ContactProxy

from orbiter.testing import Cluster
from tests.converging import until

NODE = "edge-0"
PASS, GAP = 3.0, 3.0  # seconds: a compressed schedule
DOWN, UP = 4e6, 2e6  # bits/s: downlink (node -> cloud) faster than uplink, as in orbit

# Runs until a file named "stop" appears in its working directory.
APP = "import os, time\nwhile not os.path.exists('stop'):\n    time.sleep(0.05)\n"


def compressed_plan(start: float, passes: int) -> ContactPlan:
    # The first window is long enough to join and register; then short passes.
    contacts = [Contact(start, start + 8.0, NODE, "ground", DOWN, UP)]
    t = start + 8.0 + GAP
    for _ in range(passes):
        contacts.append(Contact(t, t + PASS, NODE, "ground", DOWN, UP))
        t += PASS + GAP
    return ContactPlan(contacts)


def through(proxy: ContactProxy) -> Callable[[str, int], int]:
    """``Cluster(dial=...)``: the node dials CloudHub through the contact proxy."""

    def dial(node: str, hub_port: int) -> int:
        proxy.target = ("127.0.0.1", hub_port)
        return proxy.port

    return dial


class BlobWatcher:
    """What runs on board and wants the models the ground sends (an EdgeCore extension)."""

    seen: list[tuple[str, str, Path]] = []

    def __init__(self, context: EdgeContext) -> None:
        self.context = context
        context.on_blob(lambda name, version, path: self.seen.append((name, version, path)))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@pytest.fixture
async def proxy() -> AsyncIterator[ContactProxy]:
    config = LinkConfig(
        acquisition_s=0.3, loss=GilbertElliott.from_mean(0.01), abort_probability=0.0
    )
    plan = compressed_plan(time.monotonic() + 0.5, passes=40)
    p = ContactProxy(("127.0.0.1", 1), plan, NODE, LinkModel(config, seed=1))
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def pod_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "camera", "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "restartPolicy": "Never",
            "containers": [{"name": "app", "image": "python", "command": ["python", "-c", APP]}],
        },
    }


@pytest.mark.slow
async def test_a_satellite_node_joins_gets_a_pod_and_a_model_and_reports_between_passes(
    tmp_path: Path, proxy: ContactProxy
) -> None:
    BlobWatcher.seen.clear()
    async with Cluster(
        tmp_path,
        edges=1,
        extensions=[BlobWatcher],
        dial=through(proxy),
        reconnect_backoff=(0.05, 0.2),  # dial again soon after a window opens
        ack_timeout=2.0,
    ) as cluster:
        edge = cluster.edges[0]
        client = cluster.client
        assert cluster.cloud.sync is not None and edge.sync is not None

        # A pod, bound to the satellite, reaches it in a pass and reports Running back.
        await client.create(PODS, pod_manifest(), namespace="default")

        async def running() -> bool:
            pod = await client.get(PODS, "camera", namespace="default")
            return (pod.get("status") or {}).get("phase") == "Running"

        await until(running, "the pod Running in the API", within=60)

        # A 2 MB model: more than one pass of uplink, so it resumes across passes.
        data = random.Random(7).randbytes(2_000_000)
        manifest = build_manifest("detector", "v1", data)
        cluster.cloud.sync.offer(
            NODE, manifest, lambda i: data[i * manifest.chunk_size : (i + 1) * manifest.chunk_size]
        )

        async def activated() -> bool:
            assert edge.sync is not None
            return edge.sync.receiver.active("detector")[0] == "v1"

        await until(activated, "the model activated on board", within=90)
        blob = edge.sync.receiver.blob_path("detector", "v1").read_bytes()
        assert hashlib.sha256(blob).hexdigest() == manifest.sha256
        uplink_passes = [s for s in proxy.stats.values() if s.up > 100_000]
        assert len(uplink_passes) >= 2  # it could not fit one pass: it was resumed
        # What runs on board was told, and finds it at the stable "current" path.
        assert BlobWatcher.seen == [
            ("detector", "v1", edge.sync.receiver.blob_path("detector", "v1"))
        ]
        current = edge.sync.receiver.directory / "blobs" / "detector" / "current"
        assert current.read_bytes() == data

        # The ground learns, in a later pass, that the model is in use on board.
        async def known_on_the_ground() -> bool:
            assert cluster.cloud.sync is not None
            return cluster.cloud.sync.activated(NODE, "detector") == "v1"

        await until(known_on_the_ground, "the activation reported to the ground", within=60)

        # Between passes the node is cut off and runs alone: the pod finishes offline.
        async def offline() -> bool:
            return not edge.connected

        await until(offline, "a gap between passes", within=30)
        uid = (await client.get(PODS, "camera", namespace="default"))["metadata"]["uid"]
        (edge.runtime.root / "pods" / uid / "rootfs" / "app" / "stop").touch()

        async def finished_on_board() -> bool:
            return edge.runtime.pod_status(uid)["phase"] == "Succeeded"

        await until(finished_on_board, "the pod finished on board", within=30)

        # ...and the next pass brings the news down.
        async def reported() -> bool:
            pod = await client.get(PODS, "camera", namespace="default")
            return (pod.get("status") or {}).get("phase") == "Succeeded"

        await until(reported, "the finished pod reported in a later pass", within=60)
        # The reports came through the node's spool and the cloud's receipts.
        receipts = cluster.cloud.sync.endpoint(NODE).receipts.counters
        assert receipts.get("applied", 0) > 0
        # The proxy really cut the link between passes.
        assert sum(s.cut for s in proxy.stats.values()) >= 1
