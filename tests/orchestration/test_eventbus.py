"""KubeEdge's MQTT API on a running node, with the embedded broker and with mosquitto: what an
app publishes reaches the twin, the answers come back in KubeEdge's shapes, and reports reach
the Device's status in the cloud, also when they were made while the node was cut off."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from orbiter.orchestration.client import DEVICEMODELS, DEVICES, LocalClient

from orbiter.testing import Cluster

from ..converging import until
from ..fixtures.mosquitto import running_mosquitto
from .test_autonomy import Proxy, proxied_cluster

NS = "default"
WAIT = 30.0
DEVICE_TOPIC = f"$hw/events/device/{NS}/thermo-1"


@pytest.fixture(autouse=True)
def _grpc_released() -> Iterator[None]:
    yield
    gc.collect()  # grpc.aio's poller thread ends with the last grpc object (DMI)


def model() -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "thermostat", "namespace": NS},
        "spec": {
            "protocol": "modbus",
            "properties": [
                {"name": "temperature", "type": "FLOAT", "accessMode": "ReadOnly"},
                {"name": "setpoint", "type": "INT", "accessMode": "ReadWrite"},
            ],
        },
    }


def device(node: str) -> dict[str, Any]:
    return {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "thermo-1", "namespace": NS},
        "spec": {
            "deviceModelRef": {"name": "thermostat"},
            "nodeName": node,
            "protocol": {"protocolName": "modbus"},
            "properties": [
                {"name": "temperature"},
                {"name": "setpoint", "desired": {"value": "21"}},
            ],
        },
    }


async def reported(client: LocalClient, prop: str) -> str | None:
    status = (await client.get(DEVICES, "thermo-1", NS)).get("status") or {}
    for twin in status.get("twins") or []:
        if twin.get("propertyName") == prop:
            return str((twin.get("reported") or {}).get("value"))
    return None


async def on_node(cluster: Cluster) -> None:
    """The Device and its model are applied and the node's twin knows them."""
    await cluster.client.create(DEVICEMODELS, model(), NS)
    await cluster.client.create(DEVICES, device("edge-0"), NS)
    twin = cluster.edges[0].devices.twin

    async def known() -> bool:
        return twin.twin_document(NS, "thermo-1") is not None

    await until(known, "the device on the node")


@pytest.fixture(params=["embedded", "mosquitto"])
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    if request.param == "embedded":
        async with Cluster(tmp_path / "c", edges=1) as c:
            yield c
    else:
        async with (
            running_mosquitto(tmp_path) as port,
            Cluster(tmp_path / "c", edges=1, mqtt_broker=f"127.0.0.1:{port}") as c,
        ):
            yield c


async def next_on(messages: AsyncIterator[aiomqtt.Message], topic: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        async for message in messages:
            if str(message.topic) == topic:
                payload = orjson.loads(bytes(message.payload))  # type: ignore[arg-type]
                assert isinstance(payload, dict)
                return payload
    raise AssertionError("the subscription ended")


async def test_the_mqtt_api_answers_in_kubeedge_shapes(cluster: Cluster) -> None:
    await on_node(cluster)
    host, port = cluster.edges[0].devices.mqtt_address
    async with aiomqtt.Client(host, port, identifier="app") as app:
        await app.subscribe(f"{DEVICE_TOPIC}/twin/update/+", qos=1)
        await app.subscribe(f"{DEVICE_TOPIC}/twin/get/result", qos=1)
        messages = app.messages

        # The cloud's desired value is the twin's expected; an actual that differs: a delta.
        update = {
            "event_id": "e-1",
            "timestamp": 1_700_000_000_000,
            "twin": {"setpoint": {"actual": {"value": "19"}}},
        }
        await app.publish(f"{DEVICE_TOPIC}/twin/update", orjson.dumps(update), qos=1)
        answers: dict[str, dict[str, Any]] = {}
        for _ in range(3):
            async with asyncio.timeout(WAIT):
                message = await anext(aiter(messages))
            answers[str(message.topic).rsplit("/", 1)[1]] = orjson.loads(
                bytes(message.payload)  # type: ignore[arg-type]
            )
        assert set(answers) == {"result", "document", "delta"}
        assert answers["result"]["event_id"] == "e-1" and "code" not in answers["result"]
        assert answers["result"]["twin"]["setpoint"]["actual"]["value"] == "19"
        assert answers["delta"]["delta"] == {"setpoint": "21"}
        current = answers["document"]["twin"]["setpoint"]["current"]
        assert current["expected"]["value"] == "21" and current["actual"]["value"] == "19"

        # A key over 128 bytes, or with a bad character: code 400 and the reason.
        for bad in ("k" * 129, "set point!"):
            body = {"event_id": "e-2", "twin": {bad: {"actual": {"value": "1"}}}}
            await app.publish(f"{DEVICE_TOPIC}/twin/update", orjson.dumps(body), qos=1)
            result = await next_on(messages, f"{DEVICE_TOPIC}/twin/update/result")
            assert result["code"] == 400 and result["reason"], result
        await app.publish(f"{DEVICE_TOPIC}/twin/update", b"{not json", qos=1)
        result = await next_on(messages, f"{DEVICE_TOPIC}/twin/update/result")
        assert result["code"] == 400

        # twin/get returns the twin.
        await app.publish(f"{DEVICE_TOPIC}/twin/get", orjson.dumps({"event_id": "g"}), qos=1)
        got = await next_on(messages, f"{DEVICE_TOPIC}/twin/get/result")
        assert got["event_id"] == "g"
        assert got["twin"]["setpoint"]["actual"]["value"] == "19"

    # The report reached the cloud: the Device's status says what the device reported.
    async def in_status() -> bool:
        return await reported(cluster.client, "setpoint") == "19"

    await until(in_status, "the reported value in the Device status")


async def test_reports_made_while_cut_off_reach_the_cloud_latest_winning(
    tmp_path: Path,
) -> None:
    proxy = Proxy()
    await proxy.start()
    try:
        async with proxied_cluster(tmp_path / "c", proxy, edges=1) as cluster:
            await on_node(cluster)
            host, port = cluster.edges[0].devices.mqtt_address
            proxy.cut()
            async with aiomqtt.Client(host, port, identifier="sensor") as sensor:
                await sensor.subscribe(f"{DEVICE_TOPIC}/twin/update/result", qos=1)
                for prop, values in (("temperature", range(10)), ("setpoint", range(20, 25))):
                    for value in values:  # one at a time: each answered before the next
                        body = {"twin": {prop: {"actual": {"value": str(value)}}}}
                        topic = f"{DEVICE_TOPIC}/twin/update"
                        await sensor.publish(topic, orjson.dumps(body), qos=1)
                        result = await next_on(sensor.messages, f"{topic}/result")
                        assert "code" not in result, result
                state = {"state": "online"}
                await sensor.publish(f"{DEVICE_TOPIC}/state/update", orjson.dumps(state), qos=1)
            assert await reported(cluster.client, "temperature") is None  # still cut off
            proxy.restore()

            async def caught_up() -> bool:
                status = (await cluster.client.get(DEVICES, "thermo-1", NS)).get("status") or {}
                return (
                    await reported(cluster.client, "temperature") == "9"
                    and await reported(cluster.client, "setpoint") == "24"
                    and status.get("state") == "online"
                )

            await until(caught_up, "the reports made while cut off")
    finally:
        await proxy.stop()
