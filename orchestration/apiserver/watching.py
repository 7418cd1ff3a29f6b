"""Watch streams: store events turned into API watch events, filtered and encoded once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..apis import ResourceType
from ..store import Event, Store
from .storage import Codec
from .tasks import cancel_and_wait

Matcher = Callable[[dict[str, Any]], bool]
_BUFFER = 1000  # events a pump reads ahead of a slow watcher before it waits


@dataclass(slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]  # shared between watchers: treat as read-only
    _line: bytes | None = None

    def line(self) -> bytes:
        """The event as one newline-terminated JSON line, as the watch wire format sends it."""
        if self._line is None:
            self._line = orjson.dumps({"type": self.type, "object": self.object}) + b"\n"
        return self._line


def _decoded(codec: Codec, rt: ResourceType, event: Event, which: str) -> dict[str, Any]:
    # Every watcher of this event shares one decoded copy (and one encoded line per type).
    memo_key = f"obj:{which}:{rt.api_version}"
    obj = event.memo.get(memo_key)
    if obj is None:
        kv = event.kv if which == "cur" else event.prev
        assert kv is not None
        obj = codec.decode(rt, kv)
        event.memo[memo_key] = obj
    return obj  # type: ignore[no-any-return]


def to_watch_event(
    codec: Codec, rt: ResourceType, event: Event, matches: Matcher | None
) -> WatchEvent | None:
    """Kubernetes' selector semantics: an object leaving the selection is seen as DELETED,
    one entering it as ADDED."""
    obj = _decoded(codec, rt, event, "cur")
    etype = event.type
    if matches is not None:
        now = matches(obj)
        before = (
            matches(_decoded(codec, rt, event, "prev"))
            if event.prev is not None and etype == "MODIFIED"
            else etype != "ADDED" and now
        )
        if etype == "MODIFIED":
            if now and not before:
                etype = "ADDED"
            elif before and not now:
                etype = "DELETED"
            elif not now:
                return None
        elif not now:
            return None
    memo_key = f"ev:{etype}:{rt.api_version}"
    cached = event.memo.get(memo_key)
    if cached is None:
        cached = WatchEvent(etype, obj)
        event.memo[memo_key] = cached
    return cached  # type: ignore[no-any-return]


async def watch_events(
    store: Store,
    codec: Codec,
    rt: ResourceType,
    prefix: str,
    after: int,
    matches: Matcher | None,
    *,
    bookmark_interval: float | None,
    initial: list[WatchEvent] | None = None,
) -> AsyncIterator[WatchEvent]:
    """Events after revision ``after``; bookmarks (when asked) each ``bookmark_interval``
    of silence carry the latest revision this stream has passed."""
    for ev in initial or []:
        yield ev
    stream = store.watch(prefix, after)
    if bookmark_interval is None:
        try:
            async for event in stream:
                wev = to_watch_event(codec, rt, event, matches)
                if wev is not None:
                    yield wev
        finally:
            await _aclose(stream)
        return
    # With bookmarks, silence must be noticed. Cancelling a pending read could break the
    # store's stream, so one pump task per watch reads it into a small buffer, and the
    # waiting (cancellable) happens on the buffer.
    buf: collections.deque[Event] = collections.deque()
    wake, space = asyncio.Event(), asyncio.Event()
    ended: list[BaseException | None] = []

    async def pump() -> None:
        try:
            async for event in stream:
                buf.append(event)
                wake.set()
                if len(buf) >= _BUFFER:
                    space.clear()
                    await space.wait()
            ended.append(None)
        except Exception as exc:
            ended.append(exc)
        finally:
            wake.set()
            await _aclose(stream)

    task = asyncio.create_task(pump(), name=f"watch-pump {prefix}")
    last = after
    try:
        while True:
            while buf:
                event = buf.popleft()
                space.set()
                last = event.revision
                wev = to_watch_event(codec, rt, event, matches)
                if wev is not None:
                    yield wev
            if ended:
                if ended[0] is not None:
                    raise ended[0]
                return
            wake.clear()
            try:
                async with asyncio.timeout(bookmark_interval):
                    await wake.wait()
            except TimeoutError:
                yield bookmark(rt, last)
    finally:
        await cancel_and_wait(task)


async def _aclose(stream: AsyncIterator[Event]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def bookmark(rt: ResourceType, revision: int) -> WatchEvent:
    return WatchEvent(
        "BOOKMARK",
        {
            "kind": rt.kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(revision)},
        },
    )
