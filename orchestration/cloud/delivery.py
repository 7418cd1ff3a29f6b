"""Reliable delivery to one edge node: KubeEdge's per-node "Ack" and "NoAck" queues.

``NodeQueue`` keeps only the newest message per object UID (kubeedge.md §2.7) and sends them
in order with up to ``window`` un-ACKed at once, at most one per object, so the versions of
one object reach the node in order while the link and the node's store are kept busy. Each
is resent until the edge answers with a ``response`` whose ``parent_msg_id`` is its
``msg_id``; each ACK is reported through ``on_acked`` so the caller can record it
(ObjectSync). ``NoAckQueue`` sends once. Both are pure asyncio over a ``send(message)``
coroutine: no transport in here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..protocol import DELETE, RESPONSE, Message

log = logging.getLogger(__name__)

Send = Callable[[Message], Awaitable[None]]
AckedRV = Callable[[str], int | Awaitable[int | None] | None]
OnAcked = Callable[[str, Message], Awaitable[None] | None]

_DELETED = -1  # in the memory of recent ACKs: the object is gone, nothing for it is newer


class Verdict(enum.StrEnum):
    """What ``enqueue`` did with a message."""

    QUEUED = "queued"  # nothing was pending for the object
    REPLACED = "replaced"  # it replaced an older pending message for the object
    STALE = "stale"  # dropped: not newer than what is pending or acknowledged, or deleted
    NO_VERSION = "no_version"  # dropped: an update without a (numeric) resourceVersion
    OVERFLOW = "overflow"  # dropped: the queue holds its cap of objects; resync later


def is_delete(message: Message) -> bool:
    """A delete, or an object on its way out (``deletionTimestamp`` set)."""
    if message.operation == DELETE:
        return True
    meta = _metadata(message)
    return bool(meta and meta.get("deletionTimestamp"))


def object_uid(message: Message) -> str:
    """``content.metadata.uid`` of the object a message carries, or ""."""
    uid = (_metadata(message) or {}).get("uid")
    return uid if isinstance(uid, str) else ""


def resource_version(message: Message) -> int | None:
    """The header resourceVersion as an integer (KubeEdge compares RVs numerically)."""
    rv = message.resource_version
    return int(rv) if rv.isascii() and rv.isdigit() else None


def _metadata(message: Message) -> dict[str, Any] | None:
    content = message.content
    meta = content.get("metadata") if isinstance(content, dict) else None
    return meta if isinstance(meta, dict) else None


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@dataclass(eq=False, slots=True)
class _Flight:
    """A message sent and not yet ACKed."""

    uid: str
    message: Message
    sends: int = 0
    timer: asyncio.TimerHandle | None = None


class NodeQueue:
    """The ACKed queue of one node, keyed by object UID (the newest message per object).

    ``acked_rv(uid)`` returns the resourceVersion the node last ACKed for an object (the
    ObjectSync record) or None; ``on_acked(uid, message)`` is awaited after each ACK, one at a
    time, in the order the ACKs came. Feed the node's upstream ``response`` messages to ``ack``.
    """

    def __init__(
        self,
        send: Send,
        *,
        acked_rv: AckedRV,
        on_acked: OnAcked,
        name: str = "",
        window: int = 64,
        max_objects: int = 10_000,
        resend_interval: float = 5.0,
        max_resends: int = 4,
        retry_backoff: tuple[float, float] = (5.0, 300.0),
        remember: int = 4096,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.name = name
        self._send = send
        self._acked_rv = acked_rv
        self._on_acked = on_acked
        self._window = window
        self._max_objects = max_objects
        self._resend_interval = resend_interval
        self._max_resends = max_resends
        self._retry_backoff = retry_backoff
        self._remember = remember
        self._pending: dict[str, Message] = {}  # uid -> newest message, in flight included
        self._ready: dict[str, None] = {}  # uids to send, in order (an ordered set)
        self._deferred: dict[str, asyncio.TimerHandle] = {}  # uids waiting out a back-off
        self._failures: dict[str, int] = {}  # uid -> rounds of resends without an ACK
        self._recent: OrderedDict[str, int] = OrderedDict()  # uid -> RV acked lately
        self._flights: dict[str, _Flight] = {}  # uid -> its message in flight
        self._flight_ids: dict[str, _Flight] = {}  # msg_id -> flight
        self._acks: deque[_Flight] = deque()  # ACKed, on_acked still to run
        self._expired: deque[_Flight] = deque()  # resend interval over without an ACK
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Objects with a message not yet ACKed (those in flight included)."""
        return len(self._pending)

    def in_flight(self, uid: str) -> Message | None:
        """The message sent for an object and not yet ACKed, if any."""
        flight = self._flights.get(uid)
        return None if flight is None else flight.message

    @property
    def flying(self) -> int:
        """How many messages are sent and not yet ACKed (at most ``window``)."""
        return len(self._flights)

    def pending(self, uid: str) -> Message | None:
        """The newest message not yet ACKed for an object."""
        return self._pending.get(uid)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"nodequeue-{self.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for handle in self._deferred.values():
            handle.cancel()
        self._deferred.clear()
        for flight in self._flights.values():
            if flight.timer is not None:
                flight.timer.cancel()

    async def __aenter__(self) -> NodeQueue:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enqueue(self, message: Message, uid: str | None = None) -> Verdict:
        """Apply the enqueue rules; ``uid`` defaults to the carried object's metadata.uid."""
        uid = uid or object_uid(message)
        if not uid:
            raise ValueError(f"{message.operation} {message.resource}: no object UID to key on")
        if is_delete(message):  # always taken, replacing whatever is pending
            return self._put(uid, message)
        rv = resource_version(message)
        if rv is None:
            return Verdict.NO_VERSION
        if (verdict := self._judge(uid, rv)) is not None:
            return verdict
        if uid not in self._pending:
            if len(self._pending) >= self._max_objects:
                return Verdict.OVERFLOW
            acked = await _maybe_await(self._acked_rv(uid))
            if acked is not None and rv <= acked:
                return Verdict.STALE
            # The lookup may have let another enqueue for this object in: judge again.
            if (verdict := self._judge(uid, rv)) is not None:
                return verdict
        return self._put(uid, message)

    def ack(self, response: Message) -> bool:
        """Take an upstream message; True if it acknowledges a message in flight."""
        if response.operation != RESPONSE:
            return False
        flight = self._flight_ids.get(response.parent_msg_id)
        if flight is None:
            return False
        self._land(flight)
        uid, message = flight.uid, flight.message
        self._failures.pop(uid, None)
        self._remember_acked(
            uid, _DELETED if is_delete(message) else resource_version(message) or 0
        )
        if self._pending.get(uid) is message:
            del self._pending[uid]
        elif uid in self._pending and uid not in self._deferred:
            self._make_ready(uid)  # a newer message waited for this one
        self._acks.append(flight)
        self._wake.set()
        return True

    def retry_now(self) -> None:
        """Cut all back-offs short (e.g. the node has just reconnected)."""
        for uid, handle in list(self._deferred.items()):
            handle.cancel()
            self._make_ready(uid)

    # -- enqueue rules -----------------------------------------------------------------------

    def _judge(self, uid: str, rv: int) -> Verdict | None:
        """STALE if an update at ``rv`` must be dropped, else None (go on)."""
        stored = self._pending.get(uid)
        if stored is not None:
            stored_rv = resource_version(stored)
            if is_delete(stored) or stored_rv is None or rv <= stored_rv:
                return Verdict.STALE
            return None
        known = self._recent.get(uid)
        if known is not None and (known == _DELETED or rv <= known):
            return Verdict.STALE  # ACKed lately, maybe not yet in the caller's records
        return None

    def _put(self, uid: str, message: Message) -> Verdict:
        if uid in self._pending:
            self._pending[uid] = message
            # In flight: it goes out once the older one is ACKed or superseded at its resend
            # time. Backing off: it goes out when the back-off ends.
            if uid not in self._deferred and uid not in self._flights:
                self._make_ready(uid)
            return Verdict.REPLACED
        if len(self._pending) >= self._max_objects:
            return Verdict.OVERFLOW
        self._pending[uid] = message
        self._make_ready(uid)
        return Verdict.QUEUED

    def _make_ready(self, uid: str) -> None:
        self._deferred.pop(uid, None)
        self._ready[uid] = None
        self._wake.set()

    def _remember_acked(self, uid: str, rv: int) -> None:
        self._recent[uid] = rv
        self._recent.move_to_end(uid)
        while len(self._recent) > self._remember:
            self._recent.popitem(last=False)

    # -- sending -------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            worked = False
            while self._acks:
                worked = True
                await self._acknowledged(self._acks.popleft())
            while self._expired:
                worked = True
                await self._timed_out(self._expired.popleft())
            while self._ready and len(self._flights) < self._window:
                worked = True
                uid = next(iter(self._ready))
                del self._ready[uid]
                message = self._pending.get(uid)
                if message is not None and uid not in self._flights:
                    await self._take_off(_Flight(uid, message))
            if not worked:
                await self._wake.wait()

    async def _take_off(self, flight: _Flight) -> None:
        # Registered before the send: the ACK may come in while the send is returning.
        self._flights[flight.uid] = flight
        self._flight_ids[flight.message.msg_id] = flight
        await self._transmit(flight)

    async def _transmit(self, flight: _Flight) -> None:
        flight.sends += 1
        try:
            await self._send(flight.message)
        except Exception as exc:  # not sent counts as not ACKed: the timer resends
            log.warning("node %s: sending %s failed: %r", self.name, flight.message.resource, exc)
        if self._flights.get(flight.uid) is flight:  # not ACKed during the send
            loop = asyncio.get_running_loop()
            flight.timer = loop.call_later(self._resend_interval, self._expire, flight)

    def _expire(self, flight: _Flight) -> None:
        flight.timer = None
        if self._flights.get(flight.uid) is flight:
            self._expired.append(flight)
            self._wake.set()

    def _land(self, flight: _Flight) -> None:
        """The flight is over (ACKed, superseded or given up)."""
        if flight.timer is not None:
            flight.timer.cancel()
            flight.timer = None
        if self._flights.get(flight.uid) is flight:
            del self._flights[flight.uid]
        self._flight_ids.pop(flight.message.msg_id, None)
        self._wake.set()  # a place in the window is free

    async def _timed_out(self, flight: _Flight) -> None:
        if self._flights.get(flight.uid) is not flight:
            return  # ACKed after its timer fired
        uid = flight.uid
        if self._pending.get(uid) is not flight.message:
            self._land(flight)  # superseded: the newer message goes out in its place
            if uid in self._pending and uid not in self._deferred:
                self._make_ready(uid)
        elif flight.sends <= self._max_resends:
            log.debug("node %s: resending %s", self.name, flight.message.resource)
            await self._transmit(flight)
        else:
            self._land(flight)
            self._defer(uid)

    async def _acknowledged(self, flight: _Flight) -> None:
        try:
            await _maybe_await(self._on_acked(flight.uid, flight.message))
        except Exception:
            log.exception("node %s: on_acked failed for %s", self.name, flight.uid)

    def _defer(self, uid: str) -> None:
        """No ACK after all resends: try this object again later, the others meanwhile."""
        failures = self._failures[uid] = self._failures.get(uid, 0) + 1
        base, cap = self._retry_backoff
        delay = min(cap, base * 2 ** min(failures - 1, 62))
        log.warning(
            "node %s: no ACK for %s after %d resends; retrying in %.3g s",
            self.name,
            uid,
            self._max_resends,
            delay,
        )
        self._ready.pop(uid, None)
        loop = asyncio.get_running_loop()
        self._deferred[uid] = loop.call_later(delay, self._make_ready, uid)


class NoAckQueue:
    """Messages that need no ACK (kubeedge.md §2.7 "NoAck"): sent once, in order, never
    retried; bounded, so a stalled node costs at most ``max_messages``."""

    def __init__(self, send: Send, *, name: str = "", max_messages: int = 1000) -> None:
        self.name = name
        self._send = send
        self._max = max_messages
        self._queue: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def enqueue(self, message: Message) -> Verdict:
        if len(self._queue) >= self._max:
            return Verdict.OVERFLOW
        self._queue.append(message)
        self._wake.set()
        return Verdict.QUEUED

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"noackqueue-{self.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> NoAckQueue:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            message = self._queue.popleft()
            try:
                await self._send(message)
            except Exception as exc:
                log.warning("node %s: %s not sent (no retry): %r", self.name, message.resource, exc)
