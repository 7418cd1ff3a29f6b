"""Which namespaces exist and which are terminating, followed from the store.

Every namespaced create asks; answering from memory spares a store read per create. A miss
still reads the store (the namespace may be newer than what this process has seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..apis import ResourceType
from ..store import Store, StoreError
from .storage import Codec, object_key, type_prefix

log = logging.getLogger(__name__)


class NamespaceCache:
    def __init__(self, store: Store, codec: Codec, rt: ResourceType) -> None:
        self._store, self._codec, self._rt = store, codec, rt
        self._terminating: dict[str, bool] = {}  # name -> being deleted
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        after = await self._load()
        self._task = asyncio.create_task(self._follow(after), name="namespace-follower")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _load(self) -> int:
        listed = await self._store.list(type_prefix(self._rt))
        self._terminating = {}
        for kv in listed.kvs:
            ns = self._codec.decode(self._rt, kv)
            self._terminating[ns["metadata"]["name"]] = bool(
                ns["metadata"].get("deletionTimestamp")
            )
        return listed.revision

    async def _follow(self, after: int) -> None:
        while True:
            try:
                async for event in self._store.watch(type_prefix(self._rt), after):
                    after = event.revision
                    ns = self._codec.decode(self._rt, event.kv)
                    name = ns["metadata"]["name"]
                    if event.type == "DELETED":
                        self._terminating.pop(name, None)
                    else:
                        self._terminating[name] = bool(ns["metadata"].get("deletionTimestamp"))
                return
            except StoreError as exc:  # overflow or compaction: start again from a list
                log.warning("re-listing namespaces after the watch ended: %s", exc)
                after = await self._load()

    async def state(self, name: str) -> bool | None:
        """None: no such namespace; True: terminating; False: active."""
        known = self._terminating.get(name)
        if known is not None:
            return known
        kv = await self._store.get(object_key(self._rt, "", name))
        if kv is None:
            return None
        ns = self._codec.decode(self._rt, kv)
        return bool(ns["metadata"].get("deletionTimestamp"))
