"""EventBus on the embedded broker: which topics go to DeviceTwin, which up to the router."""

from __future__ import annotations

import asyncio

from orbiter.orchestration.edge.eventbus import Broker
from orbiter.orchestration.edge.eventbus.bridging import EventBus

WITHIN = 5.0


async def test_topics_are_sorted_between_the_twin_and_the_router() -> None:
    device: list[str] = []
    upload: list[str] = []
    arrived = asyncio.Event()

    async def on_device(topic: str, payload: bytes) -> None:
        device.append(topic)
        arrived.set()

    async def on_upload(topic: str, payload: bytes) -> None:
        upload.append(topic)
        arrived.set()

    async with Broker(port=0) as broker:
        bus = EventBus(node_name="n1", on_device=on_device, on_upload=on_upload, broker=broker)
        async with bus:
            await bus.forward(frozenset({"default/rules/+"}))
            for topic in (
                "$hw/events/device/default/d1/twin/update",
                "$hw/events/device/default/d1/twin/update/result",  # our own answer
                "$hw/events/node/n1/membership/get",
                "SYS/dis/upload_records",
                "$hw/events/upload/alarm",
                "default/user/hello",
                "default/rules/a",
                "somewhere/else",
                "$hw/events/device/default/d1/state/update",
            ):
                await bus.publish(topic, b"{}")
            async with asyncio.timeout(WITHIN):
                while len(device) + len(upload) < 7:
                    arrived.clear()
                    await arrived.wait()
    assert device == [
        "$hw/events/device/default/d1/twin/update",
        "$hw/events/node/n1/membership/get",
        "$hw/events/device/default/d1/state/update",
    ]
    assert upload == [
        "SYS/dis/upload_records",
        "$hw/events/upload/alarm",
        "default/user/hello",
        "default/rules/a",
    ]
