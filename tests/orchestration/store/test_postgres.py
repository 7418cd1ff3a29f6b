from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from orbiter.orchestration.store import (
    CompactedError,
    KeyExistsError,
    PostgresStore,
    RevisionMismatchError,
    Store,
)

from .suite import StoreSuite, take, watching

pytestmark = pytest.mark.postgres

INSERT_ROW = (
    "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, value,"
    " old_value) VALUES ($1, $2, 1, 0, 0, 0, '', '')"
)
NEXT_ID = "SELECT nextval(pg_get_serial_sequence('kine', 'id'))"


class TestPostgresStore(StoreSuite):
    @pytest.fixture
    async def store(self, postgres_database: str) -> AsyncIterator[Store]:
        store = PostgresStore(
            postgres_database, ring_size=self.RING_SIZE, watch_queue_size=self.QUEUE_SIZE
        )
        await store.start()
        yield store
        await store.close()


@pytest.fixture
async def pair(postgres_database: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    # A one-minute tick: within the test only LISTEN/NOTIFY can carry the other's writes. No
    # gap is given up on either: a writer that loses a race must fill its own burned id.
    a = PostgresStore(postgres_database, poll_interval=60, gap_timeout=60)
    b = PostgresStore(postgres_database, poll_interval=60, gap_timeout=60)
    await a.start()
    await b.start()
    yield a, b
    await b.close()
    await a.close()


async def test_two_stores_share_writes_and_watches(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    start = await b.current_revision()
    async with watching(b, "/p/", start) as on_b:
        kv = await a.create("/p/1", b"from a")
        assert await b.get("/p/1") == kv
        assert [e.kv for e in await take(on_b, 1)] == [kv]
        updated = await b.update("/p/1", b"from b", kv.mod_revision)
        assert (await a.list("/p/")).kvs == [updated]  # a list on a sees b's write at once
        assert await a.current_revision() == updated.mod_revision
        assert [e.kv for e in await take(on_b, 1)] == [updated]
    await a.compact(updated.mod_revision)
    with pytest.raises(CompactedError):
        await b.list("/p/", revision=kv.mod_revision)


async def test_cas_across_stores(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    start = await a.current_revision()
    async with (
        watching(a, "/c", start) as on_a,
        watching(b, "/c", start) as on_b,
    ):
        creates = await asyncio.gather(
            *(s.create("/c", b"0") for s in (a, b) * 4), return_exceptions=True
        )
        (kv,) = [r for r in creates if not isinstance(r, BaseException)]
        assert sum(isinstance(r, KeyExistsError) for r in creates) == 7
        history = [kv]
        for round_ in range(1, 11):
            results = await asyncio.gather(
                *(s.update("/c", b"%d" % round_, kv.mod_revision) for s in (a, b) * 4),
                return_exceptions=True,
            )
            (kv,) = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, BaseException)]
            assert len(losers) == 7
            assert all(isinstance(e, RevisionMismatchError) and e.current == kv for e in losers)
            history.append(kv)
        # Both processes see the same gap-free stream: every winner, nothing else (the
        # losers' burned ids were filled, and fill rows are not events).
        for events in (on_a, on_b):
            assert [e.kv for e in await take(events, len(history))] == history
    assert (await b.get("/c")) == kv and kv.value == b"10"


async def test_a_gap_is_waited_for_then_filled(postgres_database: str) -> None:
    store = PostgresStore(postgres_database, gap_timeout=0.5)
    await store.start()
    raw = await asyncpg.connect(postgres_database)
    try:
        first = await store.create("/g/0", b"")
        async with watching(store, "/g/", first.mod_revision) as events:
            stalled = raw.transaction()
            await stalled.start()
            held = await raw.fetchval(NEXT_ID)  # a writer that took an id and stalled
            later = await store.create("/g/2", b"")
            assert later.mod_revision == held + 1
            loop = asyncio.get_running_loop()
            began = loop.time()
            assert [e.revision for e in await take(events, 1)] == [later.mod_revision]
            assert loop.time() - began >= 0.4  # held back until the gap was given up on
            with pytest.raises(asyncpg.UniqueViolationError):  # the late writer must retry
                await raw.execute(INSERT_ROW, held, "/g/1")
            await stalled.rollback()
        assert await store.current_revision() == later.mod_revision
    finally:
        await raw.close()
        await store.close()


async def test_a_late_commit_is_delivered_in_order(postgres_database: str) -> None:
    store = PostgresStore(postgres_database, gap_timeout=60)  # never gives up in this test
    await store.start()
    raw = await asyncpg.connect(postgres_database)
    try:
        first = await store.create("/g/0", b"")
        async with watching(store, "/g/", first.mod_revision) as events:
            async with raw.transaction():
                held = await raw.fetchval(NEXT_ID)
                later = await store.create("/g/2", b"")  # visible before `held` commits
                # A list now must wait: at `later` it would miss /g/1, and a watch from its
                # revision would never see /g/1 either.
                listing = asyncio.create_task(store.list("/g/"))
                done, _ = await asyncio.wait({listing}, timeout=0.3)
                assert not done
                await raw.execute(INSERT_ROW, held, "/g/1")
            got = await take(events, 2)
            listed = await listing
        assert [(e.revision, e.kv.key) for e in got] == [
            (held, "/g/1"),
            (later.mod_revision, "/g/2"),
        ]
        assert [kv.key for kv in listed.kvs] == ["/g/0", "/g/1", "/g/2"]
        assert listed.revision == later.mod_revision
    finally:
        await raw.close()
        await store.close()


async def test_watch_from_a_revision_this_process_has_not_seen(postgres_database: str) -> None:
    store = PostgresStore(postgres_database, gap_timeout=60)
    await store.start()
    raw = await asyncpg.connect(postgres_database)
    try:
        stalled = raw.transaction()
        await stalled.start()
        held = await raw.fetchval(NEXT_ID)  # holds this process's stream at held - 1
        seen = await store.create("/p/1", b"")  # e.g. read by a list on another replica
        async with watching(store, "/p/", seen.mod_revision) as events:
            await raw.execute(INSERT_ROW, held, "/q/1")
            await stalled.commit()
            after = await store.create("/p/2", b"")
            # /p/1 reaches this watcher live, after it subscribed: it must be skipped.
            assert [e.kv for e in await take(events, 1)] == [after]
    finally:
        await raw.close()
        await store.close()
