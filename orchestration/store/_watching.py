"""What the SQL backends share: the log's rows and queries, and the broadcaster (watch cache).

Every write is one row (kine's table): ``created``/``deleted`` flags, ``prev_revision`` (the row
it replaces, the compare-and-swap key) and ``old_value`` (so an event carries its predecessor
without a join). A create stores ``create_revision = 0``: its own id is its create revision.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._base import (
    CompactedError,
    Event,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    RevisionMismatchError,
    WatchOverflowError,
)

# id, name, created, deleted, create_revision, prev_revision, value, old_value
Row = tuple[int, str, int, int, int, int, bytes, bytes]
ROW_COLUMNS = "id, name, created, deleted, create_revision, prev_revision, value, old_value"
# Fill rows (PostgreSQL) are named gap-N, deleted, with prev_revision 0: never events. No key may
# start so, or it could collide with one in the unique (name, prev_revision) index.
GAP_PREFIX = "gap-"
WriteKind = Literal["create", "update", "delete"]


def prefix_end(prefix: str) -> str | None:
    """The least string above every key starting with ``prefix`` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            nxt = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1  # skip surrogates
            return prefix[:-1] + chr(nxt)
        prefix = prefix[:-1]
    return None


def row_kv(row: Row) -> KeyValue:
    rid, name, created, _deleted, create_rev, _prev, value, _old = row
    return KeyValue(name, bytes(value), rid if created else create_rev, rid)


def row_event(row: Row) -> Event | None:
    """The event a row stands for, or None for a gap fill row."""
    rid, name, created, deleted, create_rev, prev_rev, value, old_value = row
    if deleted and prev_rev == 0:
        return None  # every real delete replaces a row; only fill rows have no predecessor
    create_rev = rid if created else create_rev
    kv = KeyValue(name, bytes(value), create_rev, rid)
    if created:
        return Event("ADDED", kv)
    if deleted:  # the delete row keeps the last value; its predecessor held the same bytes
        return Event("DELETED", kv, KeyValue(name, kv.value, create_rev, prev_rev))
    return Event("MODIFIED", kv, KeyValue(name, bytes(old_value), create_rev, prev_rev))


@dataclass(frozen=True, slots=True)
class Planned:
    """A checked write: the row to insert (without its id) and how to build its results."""

    name: str
    created: int
    deleted: int
    create_revision: int
    prev_revision: int
    value: bytes
    old_value: bytes

    def params(self) -> tuple[str, int, int, int, int, bytes, bytes]:
        return (
            self.name,
            self.created,
            self.deleted,
            self.create_revision,
            self.prev_revision,
            self.value,
            self.old_value,
        )

    def finish(self, rid: int) -> tuple[KeyValue, Event]:
        row: Row = (rid, *self.params())
        event = row_event(row)
        assert event is not None
        return event.kv, event


def plan_write(
    kind: WriteKind, key: str, value: bytes, expected: int, latest: Row | None
) -> Planned:
    """Check a write against the key's latest row (the CAS) and plan the row to append.

    Raises KeyExistsError / KeyNotFoundError / RevisionMismatchError.
    """
    live = latest is not None and not latest[3]
    if kind == "create":
        if live:
            raise KeyExistsError(key)
        return Planned(key, 1, 0, 0, latest[0] if latest else 0, value, b"")
    if latest is None or not live:
        raise KeyNotFoundError(key)
    current = row_kv(latest)
    if (kind == "update" or expected) and current.mod_revision != expected:
        raise RevisionMismatchError(key, expected, current)
    if kind == "update":
        return Planned(
            key, 0, 0, current.create_revision, current.mod_revision, value, current.value
        )
    return Planned(key, 0, 1, current.create_revision, current.mod_revision, current.value, b"")


def resolve_revision(requested: int, current: int, compacted: int) -> int:
    """The revision a read runs at: ``requested``, or the current one for 0."""
    if requested == 0:
        return current
    if requested < compacted:
        raise CompactedError(requested, compacted)
    if requested > current:
        raise FutureRevisionError(requested, current)
    return requested


def validate(key: str, value: bytes | None = None) -> None:
    if not isinstance(key, str) or not key or key.startswith(GAP_PREFIX):
        raise ValueError(f"invalid key {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"key {key!r} is not valid UTF-8 text") from None
    if value is not None and not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")


# -- queries both backends run: ``$n`` placeholders (SQLite runs them as ``?n``) -------------

MAX_REVISION = 2**63 - 1  # "now", for a query that takes a revision
LIVE_COLUMNS = "k." + ROW_COLUMNS.replace(", ", ", k.")
# kine's compaction of (lo, hi] = ($1, $2]: drop every row superseded by, and every delete (or
# fill) row at, a revision in it; what remains is exactly the state at hi.
COMPACT = """
DELETE FROM kine WHERE id IN (
    SELECT prev_revision FROM kine WHERE id > $1 AND id <= $2 AND prev_revision != 0
    UNION SELECT id FROM kine WHERE id > $1 AND id <= $2 AND deleted = 1)
"""


def _key_range(prefix: str, start_after: str, first: int) -> tuple[str, list[Any]]:
    where, args = f"name >= ${first} AND name > ${first + 1}", [prefix, start_after]
    end = prefix_end(prefix)
    if end is not None:
        where += f" AND name < ${first + 2}"
        args.append(end)
    return where, args


def live_query(
    what: str, prefix: str, start_after: str = "", limit: int = 0
) -> tuple[str, list[Any]]:
    """Select ``what`` from the live rows under ``prefix`` after ``start_after`` at revision
    ``$1`` (kine's MAX(id) GROUP BY name); returns the SQL and the parameters after ``$1``."""
    where, args = _key_range(prefix, start_after, 2)
    sql = (
        f"SELECT {what} FROM kine AS k JOIN (SELECT MAX(id) AS id FROM kine WHERE {where}"
        " AND id <= $1 GROUP BY name) AS m ON k.id = m.id WHERE k.deleted = 0"
    )
    if what == LIVE_COLUMNS:
        sql += " ORDER BY k.name"
    if limit > 0:
        sql += f" LIMIT {limit + 1:d}"  # one more tells whether there are more
    return sql, args


def after_query(prefix: str) -> tuple[str, list[Any]]:
    """Rows under ``prefix`` with ids in ($1, $2], in id order, at most $3 of them."""
    where, args = _key_range(prefix, "", 4)
    return f"SELECT {ROW_COLUMNS} FROM kine WHERE id > $1 AND id <= $2 AND {where}" + (
        " ORDER BY id LIMIT $3"
    ), args


Replay = Callable[[str, int, int], AsyncGenerator[Event, None]]
"""``replay(prefix, after, upto)``: events in (after, upto] from the database, in order."""


class _Subscriber:
    __slots__ = ("items", "maxsize", "prefix", "state", "wake")

    def __init__(self, prefix: str, maxsize: int) -> None:
        self.prefix = prefix
        self.maxsize = maxsize
        self.items: collections.deque[Event] = collections.deque()
        self.wake = asyncio.Event()
        self.state: Literal["open", "overflow", "expired", "closed"] = "open"


class Broadcaster:
    """Fans committed events out to watchers, and keeps the last ``ring_size`` in memory.

    Driven from the event loop only: ``publish`` is called in revision order with every event
    up to ``revision``. A watcher is served from the ring when its start is inside it,
    otherwise from the database up to the revision it subscribed at, then live.
    """

    def __init__(self, *, ring_size: int = 10_000, queue_size: int = 1_000) -> None:
        self.revision = 0  # every event at or below it has been published
        self._floor = 0  # the ring holds every event in (_floor, revision]
        self._ring: collections.deque[Event] = collections.deque(maxlen=ring_size)
        self._queue_size = queue_size
        self._subs: dict[str, set[_Subscriber]] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # reads awaiting a revision
        self._compacted = 0  # what ``expire`` was told, for the error it raises
        self.closed = False

    def reset(self, revision: int) -> None:
        """Start the stream at ``revision`` (the store's revision when it opens)."""
        self.revision = self._floor = revision

    def publish(self, events: Sequence[Event], revision: int) -> None:
        ring = self._ring
        for event in events:
            if len(ring) == ring.maxlen:
                self._floor = ring[0].revision
            ring.append(event)
        self.revision = max(self.revision, revision)
        if events:
            for prefix, subs in list(self._subs.items()):
                matched = [e for e in events if e.kv.key.startswith(prefix)]
                if matched:
                    for sub in list(subs):
                        self._deliver(sub, matched)
        if self._waiters:
            self._wake_waiters()

    def _deliver(self, sub: _Subscriber, events: Iterable[Event]) -> None:
        sub.items.extend(events)
        if len(sub.items) > sub.maxsize:  # too far behind: drop it, never block the others
            sub.items.clear()
            sub.state = "overflow"
            self._remove(sub)
        sub.wake.set()

    def _wake_waiters(self) -> None:
        waiting = []
        for revision, future in self._waiters:
            if not future.done():
                if revision <= self.revision or self.closed:
                    future.set_result(None)
                else:
                    waiting.append((revision, future))
        self._waiters = waiting

    async def wait_for(self, revision: int) -> bool:
        """Wait until every event up to ``revision`` is published; False if closed first."""
        if self.revision < revision and not self.closed:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((revision, future))
            await future
        return self.revision >= revision

    def expire(self, compacted: int) -> None:
        """Events up to ``compacted`` were compacted away before this process published them:
        every watcher must start again from a list (CompactedError), and the ring restarts."""
        self._ring.clear()
        self._floor = max(self._floor, compacted, self.revision)
        self._compacted = compacted
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.items.clear()
                sub.state = "expired"
                sub.wake.set()
        self._subs.clear()

    def close(self) -> None:
        self.closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.state = "closed"
                sub.wake.set()
        self._subs.clear()
        self._wake_waiters()

    def _remove(self, sub: _Subscriber) -> None:
        subs = self._subs.get(sub.prefix)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.prefix]

    async def watch(self, prefix: str, after: int, replay: Replay) -> AsyncGenerator[Event, None]:
        """Events under ``prefix`` after ``after``: past ones, then live; no gap, no repeat."""
        if self.closed:
            return
        sub = _Subscriber(prefix, self._queue_size)
        self._subs.setdefault(prefix, set()).add(sub)
        upto, sent = self.revision, after
        try:
            if after < self._floor:  # older than the ring: read the log up to where we joined
                async with contextlib.aclosing(replay(prefix, after, upto)) as past_events:
                    async for event in past_events:
                        if sub.state == "closed":
                            return
                        sent = event.revision
                        yield event
            else:
                past: list[Event] = []
                for event in reversed(self._ring):
                    if event.revision <= after:
                        break
                    if event.revision <= upto and event.kv.key.startswith(prefix):
                        past.append(event)
                for event in reversed(past):
                    sent = event.revision
                    yield event
            sent = max(sent, upto)
            while True:
                while sub.items:
                    event = sub.items.popleft()
                    if event.revision > sent:  # live events already replayed are skipped
                        sent = event.revision
                        yield event
                if sub.state == "overflow":
                    raise WatchOverflowError(
                        f"watch on {prefix!r} fell more than {sub.maxsize} events behind "
                        f"at revision {sent}"
                    )
                if sub.state == "expired":
                    raise CompactedError(sent, self._compacted)
                if sub.state == "closed":
                    return
                sub.wake.clear()
                await sub.wake.wait()
        finally:
            self._remove(sub)
