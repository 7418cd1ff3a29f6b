"""The generic hooks layers above orchestration use: EdgeCore ``extensions`` (run inside the
node, reporting through its durable outbox) and the cloud's ``upstream`` handlers (by source),
whose reply acknowledges the node's outbox row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from orbiter.orchestration.client import Client
from orbiter.orchestration.cloud.running import Cloud, UpstreamHandler
from orbiter.orchestration.edge.extensions import EdgeContext, outbox_key
from orbiter.orchestration.protocol import Message

from orbiter.testing import Cluster

from ..converging import until


class Probe:
    """An extension that reports what it is asked to, and records its lifecycle."""

    instances: list[Probe] = []

    def __init__(self, context: EdgeContext) -> None:
        self.context = context
        self.events: list[str] = []
        Probe.instances.append(self)

    async def start(self) -> None:
        self.events.append("start")
        self.context.report("probe/hello", "probe", {"node": self.context.node_name})

    async def stop(self) -> None:
        self.events.append("stop")


def handlers(received: list[tuple[str, Any]]) -> dict[str, Any]:
    def factory(client: Client) -> UpstreamHandler:
        async def handle(node: str, message: Message) -> Message | None:
            received.append((node, message.content))
            if message.resource == "probe/crash":
                raise RuntimeError("a bug in the handler")
            return message.response("OK", source="probe")

        return handle

    return {"probe": factory}


async def test_an_extension_reports_through_the_spool_to_its_handler(tmp_path: Path) -> None:
    Probe.instances.clear()
    received: list[tuple[str, Any]] = []
    async with Cluster(tmp_path, edges=1, upstream=handlers(received), extensions=[Probe]) as c:
        edge = c.edges[0]
        [probe] = Probe.instances
        assert probe.events == ["start"] and edge.extensions == [probe]
        assert probe.context.data_dir == c.edge_dir(0).absolute()

        async def handled() -> bool:
            return ("edge-0", {"node": "edge-0"}) in received

        await until(handled, "the extension's report at its handler")

        async def acknowledged() -> bool:
            assert edge.sync is not None
            return not edge.sync.spool.holds(outbox_key("probe/hello"))

        await until(acknowledged, "the ACK of the spooled report")

        # A handler that fails: the report is acknowledged all the same (sending it again
        # would fail again), and the cloud keeps working.
        probe.context.report("probe/crash", "probe", {"n": 1})

        async def crashed_and_dropped() -> bool:
            assert edge.sync is not None
            return ("edge-0", {"n": 1}) in received and not edge.sync.spool.holds(
                outbox_key("probe/crash")
            )

        await until(crashed_and_dropped, "the failed report dropped")

        # The built-in sources are not an extension's.
        with pytest.raises(ValueError, match="edged"):
            probe.context.report("probe/x", "edged", {})
        await c.stop_edge(0)
        assert probe.events == ["start", "stop"] and edge.extensions == []


def test_the_cloud_refuses_handlers_for_builtin_sources(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metaserver"):
        Cloud(tmp_path, upstream=handlers([]) | {"metaserver": handlers([])["probe"]})
