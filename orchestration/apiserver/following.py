"""Keep an in-memory view of one key prefix current: list it, then watch it.

The API server follows namespaces and CRDs this way, so that what another replica writes
to a shared store takes effect here too. Any failure (overflow, compaction, a database
error) starts again from a fresh list after a pause; the view never silently freezes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..store import Event, KeyValue, Store
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

_RETRY = 1.0  # seconds between attempts after a failure


class PrefixFollower:
    def __init__(
        self,
        store: Store,
        prefix: str,
        *,
        on_list: Callable[[list[KeyValue]], None],
        on_event: Callable[[Event], None],
        name: str,
    ) -> None:
        self._store, self._prefix, self._name = store, prefix, name
        self._on_list, self._on_event = on_list, on_event
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The first list happens here, so the view is complete when this returns."""
        after = await self._load()
        self._task = asyncio.create_task(self._run(after), name=self._name)

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _load(self) -> int:
        kvs: list[KeyValue] = []
        revision, start_after = 0, ""
        while True:
            page = await self._store.list(
                self._prefix, revision=revision, limit=500, start_after=start_after
            )
            kvs += page.kvs
            revision = page.revision
            if not page.more or not page.kvs:
                break
            start_after = page.kvs[-1].key
        self._on_list(kvs)
        return revision

    async def _run(self, after: int) -> None:
        while True:
            try:
                async for event in self._store.watch(self._prefix, after):
                    after = event.revision
                    self._on_event(event)
                return  # the store closed
            except Exception as exc:
                log.warning("%s: re-listing after the watch ended: %s", self._name, exc)
            while True:
                await asyncio.sleep(_RETRY)
                try:
                    after = await self._load()
                    break
                except Exception as exc:
                    log.warning("%s: list failed, will retry: %s", self._name, exc)
