"""KubeEdge's SyncController (kubeedge.md §2.7): the reliability backstop of downstream sync.

Messages to a node can be lost (dropped queues on disconnect, a full queue, a cloud restart);
the ObjectSync records cannot. Every ``period`` seconds, for each connected node, every record
is compared with the object as it is now: an object that is gone or no longer meant for that
node gets a delete (a stub with namespace, name and uid); one with a newer resourceVersion
than the node ACKed gets an update. Two departures from KubeEdge: a record whose object was
replaced (same path, another uid) by one the node should have is only forgotten, since a
delete, which the edge applies by path, would take the successor with it; and objects meant
for the node that have no record at all are sent too. What to send and how is the target's
business (``SyncTarget``, the edge controller); this module only walks and compares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from .controlling import meta
from .objectsyncs import ObjectSyncs, SyncRecord, parse_rv

log = logging.getLogger(__name__)


class SyncTarget(Protocol):
    def connected_nodes(self) -> Iterable[str]: ...

    def manages(self, record: SyncRecord) -> bool:
        """Whether records of this kind are the target's (others are left alone)."""

    def current(self, node: str, record: SyncRecord) -> dict[str, Any] | None:
        """The object now at the record's path if the node should have it (maybe a
        successor, with another uid); None if there is none or the node should not."""

    async def resend(self, node: str, record: SyncRecord, obj: dict[str, Any] | None) -> None:
        """Send ``obj`` to the node again, or a delete of ``record.stub()`` if None."""

    async def send_unsynced(self, node: str) -> None:
        """Send what the node should have and has no record of."""


class SyncLoop:
    def __init__(self, syncs: ObjectSyncs, target: SyncTarget, *, period: float = 5.0) -> None:
        self.syncs = syncs
        self.target = target
        self.period = period
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="syncloop")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tick(self) -> None:
        """One pass over every connected node."""
        for node in list(self.target.connected_nodes()):
            await self.check_node(node)

    async def check_node(self, node: str) -> None:
        """Repair one node: its records first (a delete must not follow an insert of the
        same path), then what it has no record of."""
        for record in self.syncs.records(node):
            if not self.target.manages(record):
                continue
            obj = self.target.current(node, record)
            if obj is None:
                await self.target.resend(node, record, None)
            elif meta(obj).get("uid") != record.uid:
                self.syncs.record_deleted(node, record.stub())  # the successor overwrites it
            elif parse_rv(meta(obj).get("resourceVersion")) > record.rv:
                await self.target.resend(node, record, obj)
        await self.target.send_unsynced(node)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.tick()
            except Exception:
                log.exception("sync loop pass failed")
