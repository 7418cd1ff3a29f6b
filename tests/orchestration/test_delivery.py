"""The per-node reliable queue: newest RV wins, deletes stick, a window of un-ACKed messages
with one per object, resends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from orbiter.orchestration.cloud.delivery import (
    NoAckQueue,
    NodeQueue,
    Verdict,
    is_delete,
    object_uid,
    resource_version,
)
from orbiter.orchestration.protocol import Message

T = TypeVar("T")
WITHIN = 10.0
SLOW = 60.0  # a resend interval no test waits out


async def within(awaitable: Awaitable[T], seconds: float = WITHIN) -> T:
    return await asyncio.wait_for(awaitable, seconds)


def update(uid: str, rv: int | None, *, name: str = "cfg", **meta: Any) -> Message:
    rv_text = "" if rv is None else str(rv)
    return Message(
        source="edgecontroller",
        group="resource",
        operation="update",
        resource=f"default/configmap/{name}",
        content={"metadata": {"name": name, "uid": uid, "resourceVersion": rv_text, **meta}},
        resource_version=rv_text,
    )


def delete(uid: str, rv: int | None = None) -> Message:
    message = update(uid, rv)
    message.operation = "delete"
    return message


class Edge:
    """Stands in for the transport and the node: records what is sent to it."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.arrivals: asyncio.Queue[Message] = asyncio.Queue()

    async def send(self, message: Message) -> None:
        self.received.append(message)
        self.arrivals.put_nowait(message)

    async def next(self) -> Message:
        return await within(self.arrivals.get())


class Acks:
    """The caller's ObjectSync records, written by on_acked."""

    def __init__(self, known: dict[str, int] | None = None) -> None:
        self.rv: dict[str, int] = dict(known or {})
        self.acked: list[tuple[str, Message]] = []
        self.asked: list[str] = []
        self.changed = asyncio.Event()

    def acked_rv(self, uid: str) -> int | None:
        self.asked.append(uid)
        return self.rv.get(uid)

    async def on_acked(self, uid: str, message: Message) -> None:
        self.acked.append((uid, message))
        if is_delete(message):
            self.rv.pop(uid, None)
        else:
            self.rv[uid] = int(message.resource_version)
        self.changed.set()

    async def until(self, count: int) -> None:
        while len(self.acked) < count:
            self.changed.clear()
            await within(self.changed.wait())


def make_queue(edge: Edge, acks: Acks, **kw: Any) -> NodeQueue:
    kw.setdefault("resend_interval", SLOW)
    return NodeQueue(edge.send, acked_rv=acks.acked_rv, on_acked=acks.on_acked, name="n1", **kw)


def ack(queue: NodeQueue, message: Message) -> bool:
    return queue.ack(message.response())


def test_message_helpers() -> None:
    m = update("u1", 42)
    assert (object_uid(m), resource_version(m), is_delete(m)) == ("u1", 42, False)
    assert is_delete(delete("u1"))
    assert is_delete(update("u1", 43, deletionTimestamp="2024-01-01T00:00:00Z"))
    assert resource_version(update("u1", None)) is None
    odd = update("u1", 1)
    odd.resource_version = "12abc"
    assert resource_version(odd) is None


async def test_newest_rv_wins_and_stale_is_dropped() -> None:
    edge, acks = Edge(), Acks()
    queue = make_queue(edge, acks)
    assert await queue.enqueue(update("u1", 5)) is Verdict.QUEUED
    assert await queue.enqueue(update("u1", 7)) is Verdict.REPLACED
    assert await queue.enqueue(update("u1", 6)) is Verdict.STALE
    assert await queue.enqueue(update("u1", 7)) is Verdict.STALE  # equal is not newer
    assert await queue.enqueue(update("u1", None)) is Verdict.NO_VERSION
    not_a_number = update("u1", 9)
    not_a_number.resource_version = "nine"
    assert await queue.enqueue(not_a_number) is Verdict.NO_VERSION
    assert len(queue) == 1
    assert (pending := queue.pending("u1")) is not None and pending.resource_version == "7"
    with pytest.raises(ValueError, match="no object UID"):
        await queue.enqueue(Message("x", "resource", "update", "default/configmap/x", {}))

    async with queue:
        sent = await edge.next()
        assert sent.resource_version == "7"
        assert not queue.ack(update("u1", 7).response())  # answers another message
        assert ack(queue, sent)
        await acks.until(1)
    assert acks.acked == [("u1", sent)] and len(queue) == 0
    assert [m.resource_version for m in edge.received] == ["7"]
    # Remembered as acknowledged, even before the caller's records are consulted.
    assert await queue.enqueue(update("u1", 7)) is Verdict.STALE
    assert await queue.enqueue(update("u1", 8)) is Verdict.QUEUED


async def test_acked_rv_is_consulted_when_nothing_is_pending() -> None:
    edge = Edge()
    asked: list[str] = []

    async def acked_rv(uid: str) -> int | None:  # an async lookup (e.g. the ObjectSync API)
        asked.append(uid)
        await asyncio.sleep(0)
        return {"u1": 10}.get(uid)

    async def on_acked(uid: str, message: Message) -> None:
        pass

    queue = NodeQueue(edge.send, acked_rv=acked_rv, on_acked=on_acked, resend_interval=SLOW)
    assert await queue.enqueue(update("u1", 9)) is Verdict.STALE
    assert await queue.enqueue(update("u1", 10)) is Verdict.STALE
    assert await queue.enqueue(update("u1", 11)) is Verdict.QUEUED
    assert await queue.enqueue(update("u1", 12)) is Verdict.REPLACED  # pending: not asked
    assert await queue.enqueue(update("u2", 1)) is Verdict.QUEUED  # no record: take it
    assert asked == ["u1", "u1", "u1", "u2"]

    # Two enqueues racing through the lookup: the older one still loses.
    newer, older = update("u3", 5), update("u3", 4)
    verdicts = await asyncio.gather(queue.enqueue(newer), queue.enqueue(older))
    assert list(verdicts) == [Verdict.QUEUED, Verdict.STALE]
    assert queue.pending("u3") is newer


async def test_delete_is_never_overtaken() -> None:
    edge, acks = Edge(), Acks()
    async with make_queue(edge, acks) as queue:
        assert await queue.enqueue(update("u1", 5)) is Verdict.QUEUED
        in_flight = await edge.next()
        assert queue.in_flight("u1") is in_flight
        assert await queue.enqueue(delete("u1")) is Verdict.REPLACED  # no RV needed
        assert await queue.enqueue(update("u1", 6)) is Verdict.STALE  # newer, yet deleted
        assert await queue.enqueue(update("u1", 99)) is Verdict.STALE
        assert ack(queue, in_flight)
        gone = await edge.next()
        assert gone.operation == "delete"
        assert ack(queue, gone)
        await acks.until(2)
        assert [m.operation for _, m in acks.acked] == ["update", "delete"]
        # ACKed delete: the caller dropped its record, the queue remembers the object is gone.
        assert "u1" not in acks.rv
        assert await queue.enqueue(update("u1", 100)) is Verdict.STALE

        # A pending (never sent) update replaced by a delete is never sent at all.
        assert await queue.enqueue(update("u2", 1)) is Verdict.QUEUED
        blocker = await edge.next()
        assert await queue.enqueue(update("u3", 1)) is Verdict.QUEUED
        assert await queue.enqueue(update("u3", 2, deletionTimestamp="now")) is Verdict.REPLACED
        assert await queue.enqueue(update("u3", 3)) is Verdict.STALE
        assert ack(queue, blocker)
        last = await edge.next()
        assert (object_uid(last), last.resource_version) == ("u3", "2")
    assert [(object_uid(m), m.resource_version) for m in edge.received] == [
        ("u1", "5"),
        ("u1", ""),
        ("u2", "1"),
        ("u3", "2"),
    ]


async def test_resend_until_acked() -> None:
    edge, acks = Edge(), Acks()
    async with make_queue(edge, acks, resend_interval=0.01, max_resends=50) as queue:
        await queue.enqueue(update("u1", 1))
        first, second, third = await edge.next(), await edge.next(), await edge.next()
        assert first.msg_id == second.msg_id == third.msg_id  # resent as is: same msg_id
        assert ack(queue, third)
        await acks.until(1)
    assert acks.acked == [("u1", first)] and len(queue) == 0


async def test_window_of_one_is_stop_and_wait() -> None:
    edge, acks = Edge(), Acks()
    async with make_queue(edge, acks, window=1, resend_interval=0.02, max_resends=50) as queue:
        for uid in ("a", "b", "c"):
            assert await queue.enqueue(update(uid, 1)) is Verdict.QUEUED
        a = await edge.next()
        # The next frame is a's resend, not b: b waits for a's ACK.
        assert (await edge.next()).msg_id == a.msg_id
        assert ack(queue, a)
        b = await edge.next()
        assert object_uid(b) == "b"
        assert ack(queue, b)
        c = await edge.next()
        assert object_uid(c) == "c"
        assert ack(queue, c)
        await acks.until(3)
    assert [object_uid(m) for _, m in acks.acked] == ["a", "b", "c"]


async def test_window_sends_ahead_but_one_message_per_object() -> None:
    edge, acks = Edge(), Acks()
    async with make_queue(edge, acks, window=3) as queue:
        for uid in ("a", "b", "c", "d"):
            assert await queue.enqueue(update(uid, 1)) is Verdict.QUEUED
        first = [await edge.next() for _ in range(3)]
        assert [object_uid(m) for m in first] == ["a", "b", "c"]
        assert queue.flying == 3 and edge.arrivals.empty()  # d waits for a free place
        assert await queue.enqueue(update("b", 2)) is Verdict.REPLACED
        assert ack(queue, first[2])  # ACKs in any order; c's place goes to d
        d = await edge.next()
        assert object_uid(d) == "d"
        assert not ack(queue, first[2])  # an ACK counts once
        assert ack(queue, first[1])  # b at rv 1: now rv 2 may go, never both at once
        b2 = await edge.next()
        assert (object_uid(b2), b2.resource_version) == ("b", "2")
        for message in (first[0], d, b2):
            assert ack(queue, message)
        await acks.until(5)
        assert queue.flying == 0 and len(queue) == 0
    # on_acked runs in the order the ACKs came.
    assert [(u, m.resource_version) for u, m in acks.acked] == [
        ("c", "1"),
        ("b", "1"),
        ("a", "1"),
        ("d", "1"),
        ("b", "2"),
    ]
    with pytest.raises(ValueError, match="window"):
        make_queue(edge, acks, window=0)


async def test_gives_up_after_resends_then_retries_later_while_others_go() -> None:
    edge, acks = Edge(), Acks()
    # A window of one: the object that gets no ACK gives its place up to the others.
    queue = make_queue(
        edge, acks, window=1, resend_interval=0.01, max_resends=2, retry_backoff=(0.05, 1.0)
    )
    async with queue:
        await queue.enqueue(update("u1", 1))
        await queue.enqueue(update("u2", 1))
        tries = [await edge.next() for _ in range(3)]  # sent, resent twice, then given up
        assert {object_uid(m) for m in tries} == {"u1"}
        other = await edge.next()  # u1 backs off; u2 goes meanwhile
        assert object_uid(other) == "u2"
        assert ack(queue, other)
        retried = await edge.next()
        assert (object_uid(retried), retried.msg_id) == ("u1", tries[0].msg_id)
        assert ack(queue, retried)
        await acks.until(2)
    assert len(queue) == 0


async def test_superseded_in_flight_message_gives_way_at_its_resend() -> None:
    edge, acks = Edge(), Acks()
    async with make_queue(edge, acks, resend_interval=0.02, max_resends=50) as queue:
        await queue.enqueue(update("u1", 1))
        old = await edge.next()
        assert await queue.enqueue(update("u1", 2)) is Verdict.REPLACED
        new = await edge.next()  # instead of resending rv 1
        assert new.resource_version == "2"
        assert not ack(queue, old)  # a late ACK for the old one is not recorded
        assert ack(queue, new)
        await acks.until(1)
    assert [m.resource_version for _, m in acks.acked] == ["2"]


async def test_send_failure_counts_as_no_ack() -> None:
    acks = Acks()
    attempts: list[Message] = []
    delivered = asyncio.Event()

    async def flaky(message: Message) -> None:
        attempts.append(message)
        if len(attempts) < 3:
            raise ConnectionError("node not connected")
        delivered.set()

    async with NodeQueue(
        flaky, acked_rv=acks.acked_rv, on_acked=acks.on_acked, resend_interval=0.01
    ) as queue:
        await queue.enqueue(update("u1", 1))
        await within(delivered.wait())
        assert queue.ack(attempts[-1].response())
        await acks.until(1)


async def test_overflow_is_reported() -> None:
    edge, acks = Edge(), Acks()
    queue = make_queue(edge, acks, max_objects=2)
    assert await queue.enqueue(update("u1", 1)) is Verdict.QUEUED
    assert await queue.enqueue(update("u2", 1)) is Verdict.QUEUED
    assert await queue.enqueue(update("u3", 1)) is Verdict.OVERFLOW
    assert await queue.enqueue(delete("u3")) is Verdict.OVERFLOW
    assert await queue.enqueue(update("u1", 2)) is Verdict.REPLACED  # known objects still move
    assert await queue.enqueue(delete("u2")) is Verdict.REPLACED
    assert len(queue) == 2 and "u3" not in acks.asked

    noack = NoAckQueue(edge.send, max_messages=2)
    assert [noack.enqueue(update("x", n)) for n in range(3)] == [
        Verdict.QUEUED,
        Verdict.QUEUED,
        Verdict.OVERFLOW,
    ]


async def test_slow_acker_sees_only_increasing_versions_and_ends_on_the_last() -> None:
    """kubeedge.md §12.2 scenario 3: 20 updates of one object while the edge ACKs late."""
    edge, acks = Edge(), Acks()
    produced = 0
    progress = asyncio.Condition()
    finished = asyncio.Event()

    async def producer(queue: NodeQueue) -> None:
        nonlocal produced
        for rv in range(1, 21):
            await queue.enqueue(update("cm", rv))
            async with progress:
                produced = rv
                progress.notify_all()
            await asyncio.sleep(0)

    def reached(rv: int) -> Callable[[], bool]:
        return lambda: produced >= rv

    async def slow_edge(queue: NodeQueue) -> None:
        while True:
            message = await edge.next()
            rv = int(message.resource_version)
            async with progress:  # ACK late: only after five more updates were made
                await progress.wait_for(reached(min(20, rv + 5)))
            queue.ack(message.response())
            if rv == 20:
                finished.set()
                return

    async with make_queue(edge, acks) as queue:
        acker = asyncio.create_task(slow_edge(queue))
        await producer(queue)
        await within(finished.wait())
        await acker
        await acks.until(len(edge.received))

    seen = [int(m.resource_version) for m in edge.received]
    assert seen == sorted(set(seen)) and seen[-1] == 20
    assert 1 < len(seen) < 20  # intermediate versions were skipped, none went backwards
    assert [int(m.resource_version) for _, m in acks.acked] == seen
    assert acks.rv == {"cm": 20}


async def test_noack_queue_sends_once_in_order() -> None:
    sent: list[Message] = []
    done = asyncio.Event()

    async def send(message: Message) -> None:
        sent.append(message)
        if len(sent) == 3:
            done.set()
        if message.content == "boom":
            raise ConnectionError("gone")

    async with NoAckQueue(send, name="n1") as queue:
        first = Message("edgecontroller", "resource", "response", "default/podlist", "boom")
        second = Message("edgecontroller", "resource", "response", "default/podlist", "a")
        third = Message("edgecontroller", "resource", "response", "default/podlist", "b")
        for m in (first, second, third):
            assert queue.enqueue(m) is Verdict.QUEUED
        await within(done.wait())
        assert len(queue) == 0
    assert sent == [first, second, third]  # the failed one was not retried
