"""The edge's Applier: writes overlap (one at a time per resource), answers keep arrival order."""

from __future__ import annotations

import asyncio

import pytest
from orbiter.orchestration.edge.applying import Applier
from orbiter.orchestration.protocol import Message

WITHIN = 10.0


def msg(resource: str, content: str) -> Message:
    return Message("edgecontroller", "resource", "update", resource, content)


class Recorder:
    """Writes wait for the test to release them; finishes are recorded in order."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.returned: list[str] = []
        self.finished: list[str] = []
        self.changed = asyncio.Event()

    def gate(self, content: str) -> asyncio.Event:
        return self.gates.setdefault(content, asyncio.Event())

    async def write(self, message: Message) -> str:
        content = str(message.content)
        self.started.append(content)
        self.changed.set()
        await self.gate(content).wait()
        if content.startswith("fail"):
            raise RuntimeError(content)
        self.returned.append(content)
        self.changed.set()
        return content.upper()

    async def finish(self, message: Message, result: str) -> None:
        self.finished.append(result)
        self.changed.set()

    async def until(self, done: list[str], count: int) -> None:
        async with asyncio.timeout(WITHIN):
            while len(done) < count:
                self.changed.clear()
                await self.changed.wait()


async def test_writes_overlap_and_finish_in_arrival_order() -> None:
    rec = Recorder()
    applier: Applier[str] = Applier(rec.write, rec.finish)
    await applier.start()
    try:
        await applier.submit(msg("default/configmap/a", "a1"))
        await applier.submit(msg("default/pod/p", "p1"))
        await applier.submit(msg("default/configmap/a", "a2"))
        await rec.until(rec.started, 2)
        assert rec.started == ["a1", "p1"]  # a2 waits for a1: same resource
        rec.gate("p1").set()
        await rec.until(rec.returned, 1)
        assert rec.finished == []  # p1 is written, but a1 came first
        rec.gate("a1").set()
        await rec.until(rec.started, 3)
        assert rec.started[-1] == "a2"
        rec.gate("a2").set()
        await rec.until(rec.finished, 3)
        assert rec.finished == ["A1", "P1", "A2"]
        assert len(applier) == 0
    finally:
        await applier.stop()


async def test_a_failed_write_is_skipped_and_the_rest_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    applier: Applier[str] = Applier(rec.write, rec.finish)
    await applier.start()
    try:
        rec.gate("fail1").set()
        rec.gate("b1").set()
        await applier.submit(msg("default/configmap/a", "fail1"))
        await applier.submit(msg("default/configmap/a", "b1"))
        await rec.until(rec.finished, 1)
        assert rec.finished == ["B1"]
        assert "could not apply update default/configmap/a" in caplog.text
    finally:
        await applier.stop()


async def test_submit_waits_at_the_limit_and_stop_drops_what_is_in_progress() -> None:
    rec = Recorder()
    applier: Applier[str] = Applier(rec.write, rec.finish, limit=2)
    with pytest.raises(RuntimeError, match="not started"):
        await applier.submit(msg("default/pod/x", "x"))
    await applier.start()
    await applier.submit(msg("default/pod/a", "a"))
    await applier.submit(msg("default/pod/b", "b"))
    third = asyncio.create_task(applier.submit(msg("default/pod/c", "c")))
    await rec.until(rec.started, 2)
    assert not third.done()  # the hub would stop reading here
    rec.gate("a").set()
    await asyncio.wait_for(third, WITHIN)
    await rec.until(rec.finished, 1)
    assert len(applier) == 2
    await applier.stop()  # b and c never finish: not ACKed, so the cloud resends them
    assert rec.finished == ["A"] and len(applier) == 0
