"""Informers: a local cache of one resource kept current by list + watch, with handlers.

Like client-go's: list once, then watch from the list's resourceVersion; a watch that ends
(its timeout) resumes from the last resourceVersion seen (events and bookmarks advance it);
a 410 (that version was compacted) relists, and the relist is diffed against the cache so
handlers still see every change as ADDED, MODIFIED or DELETED. Other failures back off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ._base import Client, ExpiredError, Resource

log = logging.getLogger(__name__)

# ``async def handler(event_type, obj, old)``: old is the cached object the event replaced
# or removed (None for ADDED).
Handler = Callable[[str, dict[str, Any], dict[str, Any] | None], Awaitable[None]]


def _copy(value: Any) -> Any:
    # Handlers and readers get private copies: the cache must not change behind its back.
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def object_key(obj: dict[str, Any]) -> str:
    """``namespace/name``, or ``name`` for a cluster-scoped object (client-go's key)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    """Cache of ``res`` objects (optionally one namespace, filtered by selectors).

    ``resync``: every that many seconds, each cached object is re-sent as MODIFIED with
    ``old`` equal to it (level-triggered controllers catch up). ``watch_timeout``: seconds
    each watch asks the server for (default: random 5-10 minutes, as client-go).
    Register handlers before ``start``; they run one event at a time, in order.
    """

    def __init__(
        self,
        client: Client,
        res: Resource,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        resync: float | None = None,
        *,
        watch_timeout: int | None = None,
        page_size: int = 500,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.client = client
        self.res = res
        self.namespace = namespace if res.namespaced else None
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync = resync
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.backoff = backoff
        self._handlers: list[Handler] = []
        self._cache: dict[str, dict[str, Any]] = {}
        self._rv = ""
        self._synced = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer of the cache and one dispatcher at a time
        self._tasks: list[asyncio.Task[None]] = []

    # --- public ----------------------------------------------------------------------------

    def on_event(self, callback: Handler) -> Handler:
        """Register ``callback`` (usable as a decorator)."""
        self._handlers.append(callback)
        return callback

    async def start(self) -> None:
        if self._tasks:
            return
        name = f"informer {self.res.plural}"
        self._tasks.append(asyncio.create_task(self._run(), name=name))
        if self.resync:
            self._tasks.append(asyncio.create_task(self._resync(self.resync), name=name))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        current = asyncio.current_task()
        # A handler may stop its own informer: it cannot wait for the task it runs in.
        await asyncio.gather(*(t for t in tasks if t is not current), return_exceptions=True)
        self._synced.clear()

    async def __aenter__(self) -> Informer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    @property
    def resource_version(self) -> str:
        """The last resourceVersion the cache reflects."""
        return self._rv

    async def wait_synced(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """True once the first list is in the cache; False if ``timeout`` passes first."""
        if self._synced.is_set():
            return True
        if not self._tasks:
            raise RuntimeError("the informer is not started")
        runner = self._tasks[0]
        waiter = asyncio.create_task(self._synced.wait())
        try:
            await asyncio.wait(
                {waiter, runner}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if not self._synced.is_set() and runner.done() and not runner.cancelled():
            runner.result()  # the informer died: raise why
        return self._synced.is_set()

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        obj = self._cache.get(f"{namespace}/{name}" if namespace else name)
        return None if obj is None else _copy(obj)

    def items(self) -> list[dict[str, Any]]:
        return [_copy(obj) for obj in self._cache.values()]

    def __len__(self) -> int:
        return len(self._cache)

    # --- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        low, high = self.backoff
        delay = low
        relist = True
        while True:
            try:
                if relist:
                    await self._list()
                    relist = False
                    self._synced.set()
                loop = asyncio.get_running_loop()
                started = loop.time()
                if await self._watch() or loop.time() - started >= low:
                    delay = low
                    continue
                # A watch that ends at once with nothing to say: do not spin on it.
                log.debug("watch of %s ended at once; backing off", self.res.plural)
            except ExpiredError as exc:
                log.info("watch of %s expired (%s); relisting", self.res.plural, exc.message)
                relist = True
                continue
            except Exception as exc:
                log.warning("informer for %s: %s; retrying in %.1fs", self.res.plural, exc, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, high)

    async def _list(self) -> None:
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await self.client.list(
                self.res,
                self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
                limit=self.page_size,
                continue_token=token,
            )
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
        for obj in items:  # list items may lack them (Kubernetes omits them); events have them
            obj.setdefault("apiVersion", self.res.api_version)
            obj.setdefault("kind", self.res.kind)
        await self._replace(items, str(page["metadata"]["resourceVersion"]))

    async def _replace(self, items: list[dict[str, Any]], rv: str) -> None:
        """Swap in a fresh list, telling handlers what changed since the cache last knew."""
        async with self._lock:
            fresh = {object_key(obj): obj for obj in items}
            events: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
            for key, obj in fresh.items():
                old = self._cache.get(key)
                if old is None:
                    events.append(("ADDED", obj, None))
                elif _rv(old) != _rv(obj):
                    events.append(("MODIFIED", obj, old))
            # Deleted while no watch was looking: the final state is unknown, the last known
            # state is the best there is.
            events += [("DELETED", old, old) for k, old in self._cache.items() if k not in fresh]
            self._cache = fresh
            self._rv = rv
            for etype, obj, old in events:
                await self._dispatch(etype, obj, old)

    async def _watch(self) -> bool:
        """One watch from the cache's resourceVersion; True if it delivered anything."""
        timeout = self.watch_timeout or random.randint(300, 600)
        stream = self.client.watch(
            self.res,
            self.namespace,
            resource_version=self._rv,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=timeout,
            allow_bookmarks=True,
        )
        seen = False
        try:
            async for event in stream:
                seen = True
                await self._apply(event)
        finally:
            await _aclose(stream)
        return seen

    async def _apply(self, event: dict[str, Any]) -> None:
        etype, obj = event.get("type"), event.get("object") or {}
        rv = _rv(obj)
        if etype == "BOOKMARK":
            if rv:
                self._rv = rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("informer for %s: ignoring a %s event", self.res.plural, etype)
            return
        async with self._lock:
            key = object_key(obj)
            if etype == "DELETED":
                old = self._cache.pop(key, None)
            else:
                old = self._cache.get(key)
                self._cache[key] = obj
                # What the cache saw decides: a re-sent ADDED of a known object modifies it.
                etype = "ADDED" if old is None else "MODIFIED"
            if rv:
                self._rv = rv
            await self._dispatch(etype, obj, old)

    async def _dispatch(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        for handler in self._handlers:
            try:
                await handler(etype, _copy(obj), None if old is None else _copy(old))
            except Exception:
                log.exception(
                    "informer for %s: handler %r failed on %s %s",
                    self.res.plural,
                    handler,
                    etype,
                    object_key(obj),
                )

    async def _resync(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            if not self._synced.is_set():
                continue
            async with self._lock:
                for obj in list(self._cache.values()):
                    await self._dispatch("MODIFIED", obj, obj)


async def _aclose(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
