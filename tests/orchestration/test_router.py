"""KubeEdge's router Rules: a REST POST to the cloud arrives on a node's MQTT topic, and what an
app on the node publishes on a Rule's topic is POSTed to the Rule's REST target."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from orbiter.orchestration.client import RULEENDPOINTS, RULES

from orbiter.testing import Cluster

from ..converging import until

NS = "default"
WAIT = 30.0


@pytest.fixture(autouse=True)
def _grpc_released() -> Iterator[None]:
    yield
    gc.collect()  # grpc.aio's poller thread ends with the last grpc object (DMI)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(tmp_path, edges=1) as c:
        for name, kind in (("my-rest", "rest"), ("my-eventbus", "eventbus")):
            body = {"metadata": {"name": name}, "spec": {"ruleEndpointType": kind}}
            await c.client.create(RULEENDPOINTS, body, NS)
        yield c


def rule(name: str, source: str, source_resource: Any, target: str, target_resource: Any) -> Any:
    return {
        "apiVersion": "rules.kubeedge.io/v1",
        "kind": "Rule",
        "metadata": {"name": name},
        "spec": {
            "source": source,
            "sourceResource": source_resource,
            "target": target,
            "targetResource": target_resource,
        },
    }


async def test_rest_to_eventbus(cluster: Cluster) -> None:
    await cluster.client.create(
        RULES, rule("to-node", "my-rest", {"path": "/a"}, "my-eventbus", {"topic": "test"}), NS
    )
    router = cluster.cloud.router
    assert router is not None
    host, port = cluster.edges[0].devices.mqtt_address
    async with (
        aiomqtt.Client(host, port, identifier="app") as app,
        aiohttp.ClientSession(router.url) as http,
    ):
        await app.subscribe("test/#", qos=1)
        await app.subscribe("test", qos=1)

        # The router takes the rule from its informer: retried until it has it.
        async def posted() -> bool:
            async with http.post(f"/edge-0/{NS}/a", data=b'{"on": true}') as response:
                return response.status == 200

        await until(posted, "the router to know the rule")
        async with http.post(f"/edge-0/{NS}/a/b/c", data=b"deeper") as response:
            assert response.status == 200, await response.text()
        got: list[tuple[str, bytes]] = []
        async with asyncio.timeout(WAIT):
            async for message in app.messages:
                got.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
                if len(got) == 2:
                    break
        assert got == [("test", b'{"on": true}'), ("test/b/c", b"deeper")]

        for path, status in ((f"/edge-0/{NS}/nope", 404), (f"/edge-9/{NS}/a", 503)):
            async with http.post(path, data=b"x") as response:
                assert response.status == status, await response.text()
        async with http.get(f"/edge-0/{NS}/a") as response:
            assert response.status == 405

    async def counted() -> Any:
        status = (await cluster.client.get(RULES, "to-node", NS)).get("status") or {}
        return status if status.get("successMessages") == 2 else None

    status = await until(counted, "the rule's counters")
    assert status["failMessages"] == 1 and "edge-9" in status["errors"][0]


async def test_eventbus_to_rest(cluster: Cluster) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def sink(request: web.Request) -> web.Response:
        received.put_nowait(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/sink", sink)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        sink_port = runner.addresses[0][1]
        source = {"topic": "default/up", "node_name": "edge-0"}
        target = {"resource": f"http://127.0.0.1:{sink_port}/sink"}
        await cluster.client.create(
            RULES, rule("to-cloud", "my-eventbus", source, "my-rest", target), NS
        )
        bus = cluster.edges[0].devices.eventbus
        assert bus is not None

        async def subscribed() -> bool:
            return "default/up" in bus.forwarded

        await until(subscribed, "the node to forward the rule's topic")
        host, port = cluster.edges[0].devices.mqtt_address
        async with aiomqtt.Client(host, port, identifier="sensor") as sensor:
            await sensor.publish("default/up", b"hello cloud", qos=1)
            await sensor.publish("default/other", b"not forwarded", qos=1)
            await sensor.publish("default/up", b"again", qos=1)
        async with asyncio.timeout(WAIT):
            assert await received.get() == b"hello cloud"
            assert await received.get() == b"again"

        # Deleting the rule stops the forwarding on the node.
        await cluster.client.delete(RULES, "to-cloud", NS)

        async def unsubscribed() -> bool:
            return "default/up" not in bus.forwarded

        await until(unsubscribed, "the node to stop forwarding")
    finally:
        await runner.cleanup()
