"""Applying the cloud's downstream messages: stored concurrently, answered in order.

The cloud keeps a window of un-ACKed messages in flight to a node (``cloud.delivery``). Each
message's write starts as soon as it arrives, after any earlier message for the same resource,
so the node's store commits many of them with one fsync (its group commit) instead of one
fsync per round trip. What follows a write (its ACK, the runtime's reaction) runs strictly in
arrival order: a node ACKs in the order it was sent, and a pod is never started before the
ConfigMap the cloud sent ahead of it. At most ``limit`` messages are in progress; beyond
that ``submit`` waits, and so the hub stops reading from the link.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from ..protocol import Message

__all__ = ["Applier"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Applier(Generic[T]):
    """``write(message)`` runs concurrently (serialised per ``message.resource``);
    ``finish(message, result)`` runs one at a time in the order ``submit`` was called."""

    def __init__(
        self,
        write: Callable[[Message], Awaitable[T]],
        finish: Callable[[Message, T], Awaitable[None]],
        *,
        limit: int = 64,
    ) -> None:
        self._write = write
        self._finish = finish
        self._limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._last: dict[str, asyncio.Task[T]] = {}  # resource -> its latest write
        self._order: deque[tuple[Message, asyncio.Task[T]]] = deque()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Messages submitted and not yet finished."""
        return len(self._order)

    async def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="edge-applier")

    async def stop(self) -> None:
        """Drop what is in progress: nothing unfinished was ACKed, so the cloud resends it."""
        runner, self._runner = self._runner, None
        tasks: list[asyncio.Task[Any]] = [task for _, task in self._order]
        if runner is not None:
            tasks.append(runner)
        self._order.clear()
        self._last.clear()
        self._slots = asyncio.Semaphore(self._limit)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def submit(self, message: Message) -> None:
        """Start applying ``message``; waits while ``limit`` messages are in progress."""
        if self._runner is None:
            raise RuntimeError("the applier is not started")
        await self._slots.acquire()
        key = message.resource
        task = asyncio.create_task(self._written(message, self._last.get(key)))
        self._last[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))
        self._order.append((message, task))
        self._wake.set()

    def _forget(self, key: str, task: asyncio.Task[T]) -> None:
        if self._last.get(key) is task:
            del self._last[key]

    async def _written(self, message: Message, before: asyncio.Task[T] | None) -> T:
        if before is not None:
            await asyncio.wait([before])  # its outcome is its own; only its order matters
        return await self._write(message)

    async def _run(self) -> None:
        while True:
            while not self._order:
                self._wake.clear()
                await self._wake.wait()
            message, task = self._order[0]
            try:
                result = await task
            except Exception:
                log.exception("could not apply %s %s", message.operation, message.resource)
            else:
                try:
                    await self._finish(message, result)
                except Exception:
                    log.exception("after applying %s %s", message.operation, message.resource)
            finally:
                if self._order and self._order[0][1] is task:
                    self._order.popleft()
                    self._slots.release()
