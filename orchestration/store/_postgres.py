"""PostgreSQL backend (asyncpg): kine's table, shared by every replica of the API server.

The database assigns revisions (BIGSERIAL), so replicas need no leader. The unique index on
``(name, prev_revision)`` is the compare-and-swap across processes. Each process runs one poll
loop (``id > last ORDER BY id``), woken at once by its own writes and by LISTEN/NOTIFY from the
others, with a slow tick as a fallback. Ids can become visible out of order (a sequence value is
taken before its transaction commits), so the poller only advances over a contiguous run of
ids; a gap that persists is filled with a ``gap-N`` row, and the late writer holding N fails on
the primary key and retries. A writer that loses a CAS race fills its own burned id at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

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

log = logging.getLogger(__name__)

CHANNEL = "orbiter_kine"
COMPACT_STEP = 1_000
STARTUP_LOOKBACK = 1_000  # re-read this many revisions at start: writes in flight before it
SCHEMA = """
SELECT pg_advisory_xact_lock(7460911);  -- replicas starting together create it once
CREATE TABLE IF NOT EXISTS kine (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,  -- byte order: prefix ranges match str.startswith
    created SMALLINT NOT NULL,
    deleted SMALLINT NOT NULL,
    create_revision BIGINT NOT NULL,
    prev_revision BIGINT NOT NULL,
    lease BIGINT NOT NULL DEFAULT 0,
    value BYTEA NOT NULL,
    old_value BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS kine_name_id ON kine (name, id);
CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision ON kine (name, prev_revision);
CREATE TABLE IF NOT EXISTS kine_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO kine_meta VALUES ('compact_revision', 0) ON CONFLICT DO NOTHING;
"""
REVISIONS = (
    "SELECT COALESCE((SELECT MAX(id) FROM kine), 0),"
    " (SELECT value FROM kine_meta WHERE name = 'compact_revision')"
)
COMPACTED = "SELECT value FROM kine_meta WHERE name = 'compact_revision'"
# FOR UPDATE: a compaction deleting this (deleted) row waits for us, so a concurrent re-create
# cannot read "no row" and insert with prev_revision 0 beside ours.
LATEST = f"SELECT {ROW_COLUMNS} FROM kine WHERE name = $1 ORDER BY id DESC LIMIT 1 FOR UPDATE"
NEXT_ID = "SELECT nextval(pg_get_serial_sequence('kine', 'id'))"
INSERT = f"""
WITH ins AS (
    INSERT INTO kine ({ROW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (name, prev_revision) DO NOTHING RETURNING id)
SELECT id, pg_notify('{CHANNEL}', '') FROM ins
"""
FILL = f"""
WITH ins AS (
    INSERT INTO kine ({ROW_COLUMNS})
    SELECT g, 'gap-' || g, 0::smallint, 1::smallint, 0, 0, ''::bytea, ''::bytea
    FROM generate_series($1::bigint, $2::bigint) AS g
    ON CONFLICT DO NOTHING RETURNING id)
SELECT count(*), pg_notify('{CHANNEL}', '') FROM ins
"""
POLL = f"SELECT {ROW_COLUMNS} FROM kine WHERE id > $1 ORDER BY id LIMIT $2"


_Rows = list[Row]


class PostgresStore(Store):
    """The replicated store: any number of processes on one PostgreSQL database."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        ring_size: int = 10_000,
        watch_queue_size: int = 1_000,
        poll_interval: float = 1.0,
        gap_timeout: float = 1.0,
        poll_batch: int = 500,
    ) -> None:
        self.dsn = dsn
        self._pool_size = pool_size
        self._poll_interval = poll_interval
        self._gap_timeout = gap_timeout
        self._poll_batch = poll_batch
        self._hub = Broadcaster(ring_size=ring_size, queue_size=watch_queue_size)
        self._wake = asyncio.Event()
        self._pool: Any = None
        self._listener: Any = None
        self._poller: asyncio.Task[None] | None = None
        self._unique_violation: type[Exception] = Exception
        self._state = "new"

    async def start(self) -> None:
        if self._state != "new":
            raise StoreError(f"PostgresStore is {self._state}")
        self._state = "starting"
        import asyncpg  # a cloud extra: edge nodes never import it

        self._unique_violation = asyncpg.UniqueViolationError
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self._pool_size)
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(SCHEMA)
                maxid, compacted = await conn.fetchrow(REVISIONS)
            self._hub.reset(max(compacted, maxid - STARTUP_LOOKBACK))
            self._listener = await asyncpg.connect(self.dsn)
            await self._listener.add_listener(CHANNEL, self._notified)
        except BaseException:
            if self._listener is not None:
                await self._listener.close()
            await self._pool.close()
            self._state = "closed"
            raise
        self._poller = asyncio.create_task(self._poll_loop(), name="postgres-store-poller")
        self._state = "open"

    async def close(self) -> None:
        if self._state != "open":
            return
        self._state = "closing"
        self._hub.close()
        self._wake.set()
        assert self._poller is not None
        await self._poller
        await self._listener.close()
        await self._pool.close()
        self._state = "closed"

    def _notified(self, *_: object) -> None:
        self._wake.set()

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreError(f"PostgresStore is {self._state}")

    async def _revisions(self) -> tuple[int, int]:
        self._check_open()
        maxid, compacted = await self._pool.fetchrow(REVISIONS)
        return int(maxid), int(compacted)

    async def _caught_up(self, revision: int) -> None:
        """Wait until this process has seen every row up to ``revision``: reads at it are
        then repeatable, and a watch from it misses nothing."""
        if self._hub.revision < revision:
            self._wake.set()
            try:
                async with asyncio.timeout(self._gap_timeout + 10.0):
                    seen = await self._hub.wait_for(revision)
            except TimeoutError:
                seen = False
            if not seen:
                raise StoreError(f"revision {revision} did not become visible (or store closed)")

    async def _at(self, revision: int) -> int:
        maxid, compacted = await self._revisions()
        at = resolve_revision(revision, max(maxid, compacted), compacted)
        await self._caught_up(min(at, maxid))
        return at

    async def current_revision(self) -> int:
        maxid, compacted = await self._revisions()
        await self._caught_up(maxid)
        return max(maxid, compacted)

    async def compacted_revision(self) -> int:
        self._check_open()
        return int(await self._pool.fetchval(COMPACTED))

    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        sql = f"SELECT {ROW_COLUMNS} FROM kine WHERE name = $1"
        if not revision:
            self._check_open()
            row = await self._pool.fetchrow(f"{sql} ORDER BY id DESC LIMIT 1", key)
        else:
            at = await self._at(revision)
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
                compacted = await conn.fetchval(COMPACTED)
                if at < compacted:
                    raise CompactedError(at, compacted)
                row = await conn.fetchrow(f"{sql} AND id <= $2 ORDER BY id DESC LIMIT 1", key, at)
        return None if row is None or row["deleted"] else row_kv(tuple(row))

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_after: str = ""
    ) -> ListResult:
        at = await self._at(revision)
        sql, args = live_query(LIVE_COLUMNS, prefix, start_after, limit)
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            compacted = await conn.fetchval(COMPACTED)
            if at < compacted:  # compacted since we chose the revision
                raise CompactedError(at, compacted)
            kvs = [row_kv(tuple(row)) for row in await conn.fetch(sql, at, *args)]
            more, remaining = limit > 0 and len(kvs) > limit, 0
            if more:
                del kvs[limit:]
                sql, args = live_query("COUNT(*)", prefix, kvs[-1].key)
                remaining = await conn.fetchval(sql, at, *args)
        return ListResult(kvs, at, more, remaining)

    async def count(self, prefix: str) -> int:
        self._check_open()
        sql, args = live_query("COUNT(*)", prefix)
        return int(await self._pool.fetchval(sql, MAX_REVISION, *args))

    async def _write(self, kind: WriteKind, key: str, value: bytes, expected: int) -> KeyValue:
        self._check_open()
        validate(key, value)
        for _ in range(100):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    latest = await conn.fetchrow(LATEST, key)
                    planned = plan_write(
                        kind, key, value, expected, tuple(latest) if latest else None
                    )
                    rid = await conn.fetchval(NEXT_ID)
                    if await conn.fetchval(INSERT, rid, *planned.params()) is None:
                        # Lost a race from the same revision: fill our burned id now, then
                        # look again (the CAS check gives the right error, or we retry).
                        await conn.fetchval(FILL, rid, rid)
                        continue
            except self._unique_violation:
                continue  # our id was filled as a gap while we stalled
            finally:
                self._wake.set()
            return planned.finish(rid)[0]
        raise StoreError(f"{kind} of {key!r} kept colliding with concurrent writers")

    async def create(self, key: str, value: bytes) -> KeyValue:
        return await self._write("create", key, value, 0)

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        return await self._write("update", key, value, expected_revision)

    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        return await self._write("delete", key, b"", expected_revision)

    async def compact(self, revision: int) -> int:
        current = await self.current_revision()  # our poller has published what we drop
        if revision > current:
            raise FutureRevisionError(revision, current)
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                compacted = await conn.fetchval(f"{COMPACTED} FOR UPDATE")  # one compactor
                if compacted >= revision:
                    return int(compacted)
                hi = min(revision, compacted + COMPACT_STEP)
                await conn.execute(COMPACT, compacted, hi)
                await conn.execute(
                    "UPDATE kine_meta SET value = $1 WHERE name = 'compact_revision'", hi
                )

    async def watch(self, prefix: str, after: int) -> AsyncIterator[Event]:
        compacted = await self.compacted_revision()
        if after < compacted:
            raise CompactedError(after, compacted)
        async with contextlib.aclosing(self._hub.watch(prefix, after, self._replay)) as events:
            async for event in events:
                yield event

    async def _replay(self, prefix: str, after: int, upto: int) -> AsyncGenerator[Event, None]:
        sql, args = after_query(prefix)
        while after < upto and not self._hub.closed:
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
                compacted = await conn.fetchval(COMPACTED)
                if after < compacted:
                    raise CompactedError(after, compacted)
                rows = await conn.fetch(sql, after, upto, 1_000, *args)
            if not rows:
                return
            for row in rows:
                event = row_event(tuple(row))
                if event is not None:
                    yield event
            after = rows[-1]["id"]

    # -- the poll loop -----------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        gap: tuple[int, float] | None = None  # (first missing id, when we first saw it)
        while not self._hub.closed:
            self._wake.clear()  # a wake during the query makes us poll again at once
            try:
                rows = await self._pool.fetch(POLL, self._hub.revision, self._poll_batch)
                rows = [tuple(row) for row in rows]
                if not await self._advance(rows):
                    gap = None
                    if len(rows) == self._poll_batch:
                        continue
                    timeout = self._poll_interval
                else:
                    missing = self._hub.revision + 1
                    if gap is None or gap[0] != missing:
                        gap = (missing, loop.time())
                    if loop.time() - gap[1] >= self._gap_timeout:
                        await self._fill(missing, rows)
                        gap = None
                        continue
                    timeout = 0.02  # it is usually a transaction about to commit
            except Exception:
                if self._hub.closed:
                    return
                log.exception("store poll failed; retrying")
                timeout = self._poll_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _advance(self, rows: _Rows) -> bool:
        """Publish the contiguous run of ``rows``; True when a gap stopped it."""
        last, compacted = self._hub.revision, None
        events: list[Event] = []
        for row in rows:
            if row[0] != last + 1:
                if compacted is None:
                    compacted = int(await self._pool.fetchval(COMPACTED))
                if last < compacted:  # ids a compaction removed will never come
                    last = min(compacted, row[0] - 1)
                    # Their events are lost to this process: publish what came before, then
                    # send every watcher back to a list rather than let it miss them.
                    if events:
                        self._hub.publish(events, events[-1].revision)
                        events = []
                    self._hub.expire(last)
                if row[0] != last + 1:
                    break
            last = row[0]
            event = row_event(row)
            if event is not None:
                events.append(event)
        if last > self._hub.revision:
            self._hub.publish(events, last)
        return len(rows) > 0 and rows[-1][0] > last

    async def _fill(self, missing: int, rows: _Rows) -> None:
        upto = next(row[0] for row in rows if row[0] > missing) - 1
        log.warning("store revisions %d..%d did not commit in time; filling", missing, upto)
        await self._pool.fetchval(FILL, missing, upto)
