"""Device reports from a node become the Device's status: only from its own node, latest wins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from orbiter.orchestration.apis import DEVICES as DEVICE_CRDS
from orbiter.orchestration.apis import load_crds
from orbiter.orchestration.client import DEVICES, LocalClient
from orbiter.orchestration.cloud.devicestatus import DeviceReports
from orbiter.orchestration.cloud.installing import install_crds
from orbiter.orchestration.protocol import Message

NS = "default"
NOW = 1_700_000_000.0


@pytest.fixture
async def reports(client: LocalClient) -> DeviceReports:
    await install_crds(client, load_crds(DEVICE_CRDS))
    device = {
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "t1"},
        "spec": {
            "deviceModelRef": {"name": "thermo"},
            "nodeName": "edge-1",
            "properties": [{"name": "temperature", "desired": {"value": "20"}}],
        },
    }
    await client.create(DEVICES, device, NS)
    return DeviceReports(client, clock=lambda: NOW)


def twin(prop: str, actual: str | None, stamp: int, expected: str | None = None) -> Message:
    value: dict[str, Any] = {}
    if actual is not None:
        value["actual"] = {"value": actual, "metadata": {"timestamp": stamp}}
    if expected is not None:
        value["expected"] = {"value": expected, "metadata": {"timestamp": stamp}}
    content = {"event_id": "e", "timestamp": stamp, "twin": {prop: value}}
    resource = f"device/{NS}/t1/twin/edge_updated"
    return Message("twin", "resource", "update", resource, content)


def state(value: Any, stamp: int = 1) -> Message:
    content = {"event_id": "e", "timestamp": stamp, "state": value}
    return Message("twin", "resource", "update", f"device/{NS}/t1/state/update", content)


async def status_of(client: LocalClient) -> dict[str, Any]:
    return dict((await client.get(DEVICES, "t1", NS)).get("status") or {})


async def test_twin_and_state_reports_update_the_status(
    reports: DeviceReports, client: LocalClient
) -> None:
    reply = await reports.handle("edge-1", twin("temperature", "21.5", 1000, expected="20"))
    assert (reply.operation, reply.content) == ("response", "OK")
    assert reply.parent_msg_id  # answers the report, so the node drops it from its outbox
    reply = await reports.handle("edge-1", twin("humidity", "40", 1001))
    assert reply.operation == "response"
    reply = await reports.handle("edge-1", state("online", 1_700_000_000_000))
    assert reply.operation == "response"
    status = await status_of(client)
    assert status["twins"] == [
        {
            "propertyName": "temperature",
            "reported": {"value": "21.5", "metadata": {"timestamp": "1000"}},
            "observedDesired": {"value": "20", "metadata": {"timestamp": "1000"}},
        },
        {
            "propertyName": "humidity",
            "reported": {"value": "40", "metadata": {"timestamp": "1001"}},
        },
    ]
    assert status["state"] == "online"
    assert status["lastOnlineTime"] == "2023-11-14T22:13:20Z"
    assert status["lastReportTime"] == "2023-11-14T22:13:20Z"

    # An older report arriving late changes nothing; a newer one wins.
    await reports.handle("edge-1", twin("temperature", "19", 900))
    await reports.handle("edge-1", twin("temperature", "22", 2000))
    [temperature, _] = (await status_of(client))["twins"]
    assert temperature["reported"]["value"] == "22"
    assert temperature["observedDesired"]["value"] == "20"  # untouched by a report without it


async def test_concurrent_reports_of_one_device_lose_nothing(
    reports: DeviceReports, client: LocalClient
) -> None:
    props = [f"p{i}" for i in range(20)]
    replies = await asyncio.gather(
        *(reports.handle("edge-1", twin(p, str(i), 10 + i)) for i, p in enumerate(props))
    )
    assert {r.operation for r in replies} == {"response"}
    twins = (await status_of(client))["twins"]
    assert sorted(t["propertyName"] for t in twins) == sorted(props)


async def test_refused_reports_say_why_and_change_nothing(
    reports: DeviceReports, client: LocalClient
) -> None:
    cases = [
        ("edge-2", twin("temperature", "1", 5), "forbidden: device default/t1 is not bound"),
        ("edge-1", state("sleepy"), "bad request: state 'sleepy' is not one of"),
        ("edge-1", state(7), "bad request: state 7"),
        ("edge-1", twin("temperature", "x" * 600, 5), "value must be a string under 512"),
        (
            "edge-1",
            Message("twin", "resource", "update", f"device/{NS}/t1/twin/edge_updated", "nope"),
            "bad request: the content must be an object",
        ),
        (
            "edge-1",
            Message("twin", "resource", "update", f"device/{NS}/nope/state/update", {}),
            "not found: device default/nope",
        ),
        (
            "edge-1",
            Message("twin", "resource", "update", "device/x/twin", {}),
            "is not a device twin or state report",
        ),
        (
            "edge-1",
            Message("twin", "resource", "delete", f"device/{NS}/t1/state/update", {}),
            "bad request: delete",
        ),
    ]
    many = twin("p", "1", 5)
    many.content["twin"] = {f"p{i}": {"actual": {"value": "1"}} for i in range(1025)}
    cases.append(("edge-1", many, "bad request: a Device's status holds at most 1024 twins"))
    for node, message, reason in cases:
        reply = await reports.handle(node, message)
        assert reply.operation == "error", reason
        assert reason in str(reply.content)
    assert await status_of(client) == {}
