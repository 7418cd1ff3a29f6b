"""SQLite backend: kine's table in WAL mode, one writer thread with group commit.

Writers queue their writes; the writer thread drains the queue and commits everything pending
in ONE transaction (one fsync), checking each compare-and-swap inside it, so concurrent writes
of one key serialise and exactly one of two conflicting creates wins. A write's future resolves
only after its commit. Reads run on separate connections in their own threads. One process
owns a database file: the writer thread is also the source of the watch stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from ._base import (
    CompactedError,
    Event,
    FutureRevisionError,
    KeyValue,
    ListResult,
    Store,
    StoreError,
)
from ._watching import (
    COMPACT,
    LIVE_COLUMNS,
    MAX_REVISION,
    ROW_COLUMNS,
    Broadcaster,
    Row,
    WriteKind,
    after_query,
    live_query,
    plan_write,
    resolve_revision,
    row_event,
    row_kv,
    validate,
)

T = TypeVar("T")
COMPACT_STEP = 1_000  # revisions per compaction transaction, so writers are never held long

SCHEMA = """
CREATE TABLE IF NOT EXISTS kine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: compacted ids are never reused
    name TEXT NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    lease INTEGER NOT NULL DEFAULT 0,
    value BLOB NOT NULL,
    old_value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS kine_name_id ON kine (name, id);
CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision ON kine (name, prev_revision);
CREATE TABLE IF NOT EXISTS kine_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
LATEST = f"SELECT {ROW_COLUMNS} FROM kine WHERE name = ? AND id <= ? ORDER BY id DESC LIMIT 1"
INSERT = (
    "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, value, old_value)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
SET_COMPACTED = (
    "INSERT INTO kine_meta (name, value) VALUES ('compact_revision', ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
REVISIONS = (
    "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'kine'),"
    " (SELECT value FROM kine_meta WHERE name = 'compact_revision')"
)


@dataclass(slots=True)
class _Write:
    kind: WriteKind | Literal["compact"]
    key: str
    value: bytes
    expected: int  # for "compact": the revision to compact to
    future: asyncio.Future[Any] = field(repr=False)


_Batch = list[_Write]
_Events = list[Event]
_Outcomes = list[tuple[Any, BaseException | None]]  # (result, error) per write of a batch


def _revisions(conn: sqlite3.Connection) -> tuple[int, int]:
    current, compacted = conn.execute(REVISIONS).fetchone()
    return int(current or 0), int(compacted or 0)


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[tuple[int, int]]:
    """One read transaction: every query inside sees the same committed state."""
    conn.execute("BEGIN")
    yield _revisions(conn)
    conn.execute("COMMIT")  # on an error the worker rolls back


def _get(conn: sqlite3.Connection, key: str, revision: int) -> KeyValue | None:
    with _snapshot(conn) as (current, compacted):
        at = resolve_revision(revision, current, compacted)
        row = conn.execute(LATEST, (key, at)).fetchone()
    return None if row is None or row[3] else row_kv(row)


def _list(
    conn: sqlite3.Connection, prefix: str, revision: int, limit: int, start_after: str
) -> ListResult:
    with _snapshot(conn) as (current, compacted):
        at = resolve_revision(revision, current, compacted)
        sql, args = live_query(LIVE_COLUMNS, prefix, start_after, limit)
        kvs = [row_kv(row) for row in conn.execute(sql.replace("$", "?"), [at, *args])]
        more, remaining = limit > 0 and len(kvs) > limit, 0
        if more:
            del kvs[limit:]
            sql, args = live_query("COUNT(*)", prefix, kvs[-1].key)
            (remaining,) = conn.execute(sql.replace("$", "?"), [at, *args]).fetchone()
    return ListResult(kvs, at, more, remaining)


def _count(conn: sqlite3.Connection, prefix: str) -> int:
    sql, args = live_query("COUNT(*)", prefix)
    (n,) = conn.execute(sql.replace("$", "?"), [MAX_REVISION, *args]).fetchone()
    return int(n)


def _after(conn: sqlite3.Connection, prefix: str, after: int, upto: int) -> list[Row]:
    with _snapshot(conn) as (_, compacted):
        if after < compacted:  # the rows after it may be gone
            raise CompactedError(after, compacted)
        sql, args = after_query(prefix)
        return conn.execute(sql.replace("$", "?"), [after, upto, 1_000, *args]).fetchall()


class _Workers:
    """``count`` threads, each with its own connection, serving one queue.

    ``handle`` gets everything already waiting (up to ``batch`` items) at once: for the writer
    that is the group commit. ``stop`` lets the queued work finish first.
    """

    def __init__(
        self,
        path: str,
        name: str,
        *,
        setup: Callable[[sqlite3.Connection], None],
        handle: Callable[[sqlite3.Connection, list[Any]], None],
        count: int = 1,
        batch: int = 1,
    ) -> None:
        self._path, self._setup, self._handle, self._batch = path, setup, handle, batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        self._ready: list[asyncio.Future[None]] = []
        self._exited: list[asyncio.Future[None]] = []

    def put(self, item: Any) -> None:
        self._queue.put(item)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for thread in self._threads:
            self._ready.append(loop.create_future())
            self._exited.append(loop.create_future())
            thread.start()
        failures = [
            r for r in await asyncio.gather(*self._ready, return_exceptions=True) if r is not None
        ]
        if failures:
            await self.stop()
            raise failures[0]

    async def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)  # after every queued item
        await asyncio.gather(*self._exited)
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        index = self._threads.index(threading.current_thread())
        ready, exited = self._ready[index], self._exited[index]
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            self._setup(conn)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            _resolve(ready, exc=StoreError(f"cannot open {self._path}: {exc}"))
            _resolve(exited)
            return
        _resolve(ready)
        try:
            stop = False
            while not stop and (first := self._queue.get()) is not None:
                items = [first]
                while len(items) < self._batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    items.append(item)
                self._handle(conn, items)
        finally:
            conn.close()
            _resolve(exited)


def _query_only(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA query_only = ON")


def _serve_reads(conn: sqlite3.Connection, items: list[Any]) -> None:
    for fn, args, future in items:
        try:
            result = fn(conn, *args)
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _resolve(future, exc=exc)
        else:
            _resolve(future, result)


def _settle(
    future: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():  # the caller was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _resolve(
    future: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None
) -> None:
    """Settle a loop's future from a worker thread."""
    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
        future.get_loop().call_soon_threadsafe(_settle, future, result, exc)


class SQLiteStore(Store):
    """The embedded store: one SQLite file in WAL mode, ``synchronous=FULL``.

    Acknowledged writes survive ``kill -9`` and power loss; group commit amortises the fsync.
    """

    def __init__(
        self,
        path: str,
        *,
        readers: int = 2,
        batch_size: int = 1_000,
        ring_size: int = 10_000,
        watch_queue_size: int = 1_000,
    ) -> None:
        if path in ("", ":memory:") or path.startswith("file:"):
            raise ValueError(f"SQLiteStore needs a file path, not {path!r}")
        self.path = path
        self._hub = Broadcaster(ring_size=ring_size, queue_size=watch_queue_size)
        self._writer = _Workers(
            path, "sqlite-writer", setup=self._setup, handle=self._commit, batch=batch_size
        )
        self._readers = _Workers(
            path, "sqlite-reader", setup=_query_only, handle=_serve_reads, count=readers
        )
        self._committed = 0  # the last committed revision (set by the writer thread)
        self._compacted = 0
        self._state = "new"

    async def start(self) -> None:
        if self._state != "new":
            raise StoreError(f"SQLiteStore({self.path!r}) is {self._state}")
        self._state = "closed"  # unless all goes well
        self._loop = asyncio.get_running_loop()
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        await self._writer.start()  # creates the schema and reads the revisions
        self._hub.reset(self._committed)
        try:
            await self._readers.start()
        except BaseException:
            await self._writer.stop()
            raise
        self._state = "open"

    async def close(self) -> None:
        if self._state != "open":
            return
        self._state = "closing"
        self._hub.close()
        await self._writer.stop()  # commits what is queued first
        await self._readers.stop()
        self._state = "closed"

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreError(f"SQLiteStore({self.path!r}) is {self._state}")

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._readers.put((fn, args, future))
        return await future

    async def current_revision(self) -> int:
        self._check_open()
        return max(self._committed, self._compacted)

    async def compacted_revision(self) -> int:
        self._check_open()
        return self._compacted

    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        return await self._read(_get, key, revision)

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_after: str = ""
    ) -> ListResult:
        return await self._read(_list, prefix, revision, limit, start_after)

    async def count(self, prefix: str) -> int:
        return await self._read(_count, prefix)

    async def _write(self, kind: WriteKind, key: str, value: bytes, expected: int) -> KeyValue:
        self._check_open()
        validate(key, value)
        future: asyncio.Future[KeyValue] = asyncio.get_running_loop().create_future()
        self._writer.put(_Write(kind, key, value, expected, future))
        return await future

    async def create(self, key: str, value: bytes) -> KeyValue:
        return await self._write("create", key, value, 0)

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        return await self._write("update", key, value, expected_revision)

    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        return await self._write("delete", key, b"", expected_revision)

    async def compact(self, revision: int) -> int:
        self._check_open()
        current = max(self._committed, self._compacted)
        if revision > current:
            raise FutureRevisionError(revision, current)
        while self._compacted < revision:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            hi = min(revision, self._compacted + COMPACT_STEP)
            self._writer.put(_Write("compact", "", b"", hi, future))
            await future
        return self._compacted

    async def watch(self, prefix: str, after: int) -> AsyncIterator[Event]:
        self._check_open()
        if after < self._compacted:
            raise CompactedError(after, self._compacted)
        async with contextlib.aclosing(self._hub.watch(prefix, after, self._replay)) as events:
            async for event in events:
                yield event

    async def _replay(self, prefix: str, after: int, upto: int) -> AsyncGenerator[Event, None]:
        while after < upto and not self._hub.closed:
            rows = await self._read(_after, prefix, after, upto)
            if not rows:
                return
            for row in rows:
                event = row_event(row)
                if event is not None:
                    yield event
            after = rows[-1][0]

    # -- in the writer thread ----------------------------------------------------------------

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # an acknowledged write is on disk
        conn.executescript(SCHEMA)
        self._committed, self._compacted = _revisions(conn)

    def _commit(self, conn: sqlite3.Connection, batch: _Batch) -> None:
        """Apply everything waiting in one transaction, then settle the futures."""
        outcomes, events = self._apply(conn, batch)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._deliver, batch, outcomes, events, self._committed)

    def _apply(self, conn: sqlite3.Connection, batch: _Batch) -> tuple[_Outcomes, _Events]:
        outcomes: _Outcomes = []
        events: list[Event] = []
        compacted = self._compacted
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                try:
                    if op.kind == "compact":
                        if op.expected > compacted:
                            conn.execute(COMPACT.replace("$", "?"), (compacted, op.expected))
                            conn.execute(SET_COMPACTED, (op.expected,))
                            compacted = op.expected
                        outcomes.append((None, None))
                        continue
                    latest = conn.execute(LATEST, (op.key, MAX_REVISION)).fetchone()
                    planned = plan_write(op.kind, op.key, op.value, op.expected, latest)
                    rid = conn.execute(INSERT, planned.params()).lastrowid
                    assert rid is not None
                    kv, event = planned.finish(rid)
                    events.append(event)
                    outcomes.append((kv, None))
                except StoreError as exc:
                    outcomes.append((None, exc))
                except sqlite3.Error as exc:
                    if not conn.in_transaction:  # SQLite rolled back the whole batch
                        raise
                    outcomes.append((None, StoreError(f"write failed: {exc}")))
                except Exception as exc:  # one bad write must not stop the writer thread
                    outcomes.append((None, StoreError(f"write failed: {exc!r}")))
            conn.execute("COMMIT")
        except (sqlite3.Error, ValueError) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StoreError(f"commit failed, nothing written: {exc}")
            return [(None, failure)] * len(batch), []
        if events:
            self._committed = events[-1].revision
        self._compacted = compacted
        return outcomes, events

    def _deliver(self, batch: _Batch, outcomes: _Outcomes, events: _Events, revision: int) -> None:
        if events:
            self._hub.publish(events, revision)
        for op, (result, exc) in zip(batch, outcomes, strict=True):
            _settle(op.future, result, exc)
