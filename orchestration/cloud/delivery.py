"""Reliable delivery to one edge node: KubeEdge's per-node "Ack" and "NoAck" queues.

``NodeQueue`` keeps only the newest message per object UID (kubeedge.md §2.7), sends them one
at a time (stop-and-wait: at most one un-ACKed message per node), resends until the edge
answers with a ``response`` whose ``parent_msg_id`` is the sent ``msg_id``, and reports each
ACK through ``on_acked`` so the caller can record it (ObjectSync). ``NoAckQueue`` sends once.
Both are pure asyncio over a ``send(message)`` coroutine: no transport in here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
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


class NodeQueue:
    """The ACKed queue of one node, keyed by object UID (the newest message per object).

    ``acked_rv(uid)`` returns the resourceVersion the node last ACKed for an object (the
    ObjectSync record) or None; ``on_acked(uid, message)`` is awaited after each ACK, before
    the next message goes out. Feed the node's upstream ``response`` messages to ``ack``.
    """

    def __init__(
        self,
        send: Send,
        *,
        acked_rv: AckedRV,
        on_acked: OnAcked,
        name: str = "",
        max_objects: int = 10_000,
        resend_interval: float = 5.0,
        max_resends: int = 4,
        retry_backoff: tuple[float, float] = (5.0, 300.0),
        remember: int = 4096,
    ) -> None:
        self.name = name
        self._send = send
        self._acked_rv = acked_rv
        self._on_acked = on_acked
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
        self._in_flight: Message | None = None
        self._acked = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Objects with a message not yet ACKed (the one in flight included)."""
        return len(self._pending)

    @property
    def in_flight(self) -> Message | None:
        """The message sent and not yet ACKed, if any (at most one: stop-and-wait)."""
        return self._in_flight

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
        """Take an upstream message; True if it acknowledges the message in flight."""
        current = self._in_flight
        if (
            current is None
            or response.operation != RESPONSE
            or response.parent_msg_id != current.msg_id
        ):
            return False
        self._acked.set()
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
            if uid not in self._deferred:
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
            while not self._ready:
                self._wake.clear()
                await self._wake.wait()
            uid = next(iter(self._ready))
            del self._ready[uid]
            message = self._pending.get(uid)
            if message is not None:
                await self._deliver(uid, message)

    async def _deliver(self, uid: str, message: Message) -> None:
        self._in_flight = message
        self._acked.clear()
        try:
            for attempt in range(self._max_resends + 1):
                try:
                    await self._send(message)
                except Exception as exc:  # not sent counts as not ACKed: the timer resends
                    log.warning("node %s: sending %s failed: %r", self.name, message.resource, exc)
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # lands as the ACK arrives, and close() would wait for this task forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._resend_interval):
                        await self._acked.wait()
                if self._acked.is_set():
                    break
                if self._pending.get(uid) is not message:
                    return  # superseded: the newer message is already queued
                if attempt < self._max_resends:
                    log.debug("node %s: resending %s", self.name, message.resource)
            else:
                self._defer(uid)
                return
        finally:
            self._in_flight = None
        await self._acknowledged(uid, message)

    async def _acknowledged(self, uid: str, message: Message) -> None:
        self._failures.pop(uid, None)
        deleted = is_delete(message)
        self._remember_acked(uid, _DELETED if deleted else resource_version(message) or 0)
        if self._pending.get(uid) is message:
            del self._pending[uid]
        try:
            await _maybe_await(self._on_acked(uid, message))
        except Exception:
            log.exception("node %s: on_acked failed for %s", self.name, uid)

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
