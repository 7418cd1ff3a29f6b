"""The conformance suite every store backend passes (subclass it, define ``store``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from orbiter.orchestration.store import (
    CompactedError,
    Event,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    RevisionMismatchError,
    Store,
    WatchOverflowError,
)

TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def watching(store: Store, prefix: str, after: int) -> AsyncIterator[AsyncIterator[Event]]:
    """``store.watch`` that is closed (``aclose``) on the way out, releasing the watcher."""
    events = store.watch(prefix, after)
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        assert aclose is not None, "a watch must be closable"
        await aclose()


async def take(events: AsyncIterator[Event], n: int) -> list[Event]:
    async with asyncio.timeout(TIMEOUT):
        return [await anext(events) for _ in range(n)]


class StoreSuite:
    """Subclasses override the ``store`` fixture: a started store built with
    ``ring_size=RING_SIZE`` and ``watch_queue_size=QUEUE_SIZE``, closed after the test."""

    RING_SIZE = 32  # small, so watches from older revisions replay from the database
    QUEUE_SIZE = 64

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        raise NotImplementedError("a backend's test class defines the store fixture")
        yield  # pragma: no cover

    async def test_create_get_update_delete(self, store: Store) -> None:
        start = await store.current_revision()
        created = await store.create("/pods/a", b"one")
        assert created.key == "/pods/a" and created.value == b"one"
        assert created.mod_revision == created.create_revision > start
        assert await store.get("/pods/a") == created
        assert await store.current_revision() == created.mod_revision

        updated = await store.update("/pods/a", b"two", created.mod_revision)
        assert updated.value == b"two" and updated.create_revision == created.create_revision
        assert updated.mod_revision > created.mod_revision
        assert await store.get("/pods/a") == updated
        assert await store.get("/pods/a", revision=created.mod_revision) == created

        deleted = await store.delete("/pods/a", updated.mod_revision)
        assert deleted.value == b"two" and deleted.mod_revision > updated.mod_revision
        assert deleted.create_revision == created.create_revision
        assert await store.get("/pods/a") is None
        assert await store.get("/pods/a", revision=updated.mod_revision) == updated
        assert await store.current_revision() == deleted.mod_revision

        again = await store.create("/pods/a", b"three")  # a new life: a new create revision
        assert again.create_revision == again.mod_revision > deleted.mod_revision

    async def test_refusals(self, store: Store) -> None:
        kv = await store.create("/k", b"v")
        with pytest.raises(KeyExistsError):
            await store.create("/k", b"other")
        with pytest.raises(KeyNotFoundError):
            await store.update("/missing", b"v", 1)
        with pytest.raises(KeyNotFoundError):
            await store.delete("/missing")
        with pytest.raises(RevisionMismatchError) as mismatch:
            await store.update("/k", b"v2", kv.mod_revision + 100)
        assert mismatch.value.current == kv and mismatch.value.expected == kv.mod_revision + 100
        with pytest.raises(RevisionMismatchError):
            await store.delete("/k", kv.mod_revision + 100)
        assert await store.get("/k") == kv  # refusals wrote nothing
        assert await store.current_revision() == kv.mod_revision
        await store.delete("/k")  # expected 0: unconditional
        with pytest.raises(KeyNotFoundError):
            await store.update("/k", b"v3", kv.mod_revision)

    async def test_concurrent_creates_one_wins(self, store: Store) -> None:
        results = await asyncio.gather(
            *(store.create("/race", f"{i}".encode()) for i in range(8)), return_exceptions=True
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(winners) == 1
        assert all(isinstance(r, KeyExistsError) for r in results if r not in winners)
        assert await store.get("/race") == winners[0]

    async def test_cas_one_winner_per_round(self, store: Store) -> None:
        kv = await store.create("/counter", b"0")
        for round_ in range(1, 16):
            results = await asyncio.gather(
                *(
                    store.update("/counter", str(round_).encode(), kv.mod_revision)
                    for _ in range(8)
                ),
                return_exceptions=True,
            )
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, BaseException)]
            assert len(winners) == 1, results
            assert len(losers) == 7
            assert all(
                isinstance(e, RevisionMismatchError) and e.current == winners[0] for e in losers
            )
            kv = winners[0]
        assert (await store.get("/counter")) == kv and kv.value == b"15"

    async def test_no_update_lost(self, store: Store) -> None:
        await store.create("/counter", b"0")

        async def increment(times: int) -> None:
            for _ in range(times):
                while True:
                    kv = await store.get("/counter")
                    assert kv is not None
                    try:
                        await store.update("/counter", b"%d" % (int(kv.value) + 1), kv.mod_revision)
                        break
                    except RevisionMismatchError:
                        continue

        await asyncio.gather(*(increment(10) for _ in range(8)))
        kv = await store.get("/counter")
        assert kv is not None and kv.value == b"80"

    async def test_list_at_one_revision(self, store: Store) -> None:
        kvs = [await store.create(f"/pods/p{i}", b"v%d" % i) for i in range(5)]
        await store.create("/pod", b"not under /pods/")
        before = await store.list("/pods/")
        assert before.kvs == kvs and not before.more
        assert before.revision == await store.current_revision()
        await store.update("/pods/p1", b"changed", kvs[1].mod_revision)
        await store.delete("/pods/p2")
        await store.create("/pods/p9", b"new")
        again = await store.list("/pods/", revision=before.revision)
        assert again.kvs == kvs and again.revision == before.revision
        now = await store.list("/pods/")
        assert [kv.key for kv in now.kvs] == ["/pods/p0", "/pods/p1", "/pods/p3", "/pods/p4",
                                              "/pods/p9"]  # fmt: skip
        assert now.kvs[1].value == b"changed" and now.revision > before.revision

    async def test_pagination_is_consistent(self, store: Store) -> None:
        keys = [f"/cm/c{i:02d}" for i in range(10)]
        for key in keys:
            await store.create(key, key.encode())
        first = await store.list("/cm/", limit=3)
        assert [kv.key for kv in first.kvs] == keys[:3]
        assert first.more and first.remaining == 7
        await store.delete(keys[5])  # later writes must not show up in later pages
        await store.create("/cm/c03x", b"late")
        seen, page = [*first.kvs], first
        while page.more:
            page = await store.list(
                "/cm/", revision=first.revision, limit=3, start_after=page.kvs[-1].key
            )
            assert page.revision == first.revision
            seen += page.kvs
        assert [kv.key for kv in seen] == keys and page.remaining == 0
        assert [kv.key for kv in (await store.list("/cm/", start_after=keys[7])).kvs] == keys[8:]

    async def test_prefix_isolation_and_count(self, store: Store) -> None:
        await store.create("/a/1", b"")
        await store.create("/a/2", b"")
        await store.create("/ab/1", b"")
        await store.create("/a", b"")
        assert [kv.key for kv in (await store.list("/a/")).kvs] == ["/a/1", "/a/2"]
        assert await store.count("/a/") == 2 and await store.count("/ab/") == 1
        assert await store.count("") == 4
        await store.delete("/a/1")
        assert await store.count("/a/") == 1
        after = await store.current_revision()
        async with watching(store, "/a/", after) as events:
            await store.create("/ab/2", b"")
            last = await store.create("/a/3", b"")
            assert [e.revision for e in await take(events, 1)] == [last.mod_revision]

    async def test_revisions_outside_the_log(self, store: Store) -> None:
        old = await store.create("/x", b"1")
        for i in range(3):
            await store.create(f"/y{i}", b"")
        mid = await store.update("/x", b"2", old.mod_revision)
        await store.delete("/y0")
        current = await store.current_revision()
        with pytest.raises(FutureRevisionError):
            await store.list("/", revision=current + 5)
        assert await store.compact(mid.mod_revision) == mid.mod_revision
        assert await store.compacted_revision() == mid.mod_revision
        with pytest.raises(CompactedError):
            await store.list("/", revision=old.mod_revision)
        with pytest.raises(CompactedError):
            await store.get("/x", revision=old.mod_revision)
        at_mid = await store.list("/", revision=mid.mod_revision)  # the compacted one is kept
        assert [kv.key for kv in at_mid.kvs] == ["/x", "/y0", "/y1", "/y2"]
        assert [kv.key for kv in (await store.list("/")).kvs] == ["/x", "/y1", "/y2"]
        with pytest.raises(CompactedError):
            await anext(store.watch("/", old.mod_revision))
        assert await store.current_revision() == current
        await store.compact(current)  # drops the deleted key's rows; it can be created anew
        assert (await store.create("/y0", b"again")).mod_revision == current + 1

    async def test_watch_replays_then_goes_live(self, store: Store) -> None:
        revisions = [(await store.create(f"/w/{i}", b"")).mod_revision for i in range(50)]
        await store.create("/other", b"")

        async def writer() -> list[int]:
            done = []
            for i in range(50):
                if i % 3 == 2:
                    done.append((await store.delete(f"/w/{i}")).mod_revision)
                else:
                    done.append((await store.update(f"/w/{i}", b"x", revisions[i])).mod_revision)
                await store.create(f"/other/{i}", b"")
            return done

        # after=0 starts before the ring (RING_SIZE < 50): the database replays, then live,
        # while the writer keeps writing.
        async with watching(store, "/w/", 0) as events:
            writing = asyncio.create_task(writer())
            got = await take(events, 100)
            written = await writing
        assert [e.revision for e in got] == revisions + written
        assert [e.type for e in got[:50]] == ["ADDED"] * 50
        assert {e.type for e in got[50:]} == {"MODIFIED", "DELETED"}

        # From inside the ring: only what followed.
        async with watching(store, "/w/", written[-4]) as events:
            assert [e.revision for e in await take(events, 3)] == written[-3:]

    async def test_event_contents(self, store: Store) -> None:
        start = await store.current_revision()
        async with (
            watching(store, "/e/", start) as events,
            watching(store, "/e/", start) as twin,
        ):
            created = await store.create("/e/1", b"v1")
            updated = await store.update("/e/1", b"v2", created.mod_revision)
            deleted = await store.delete("/e/1")
            added, modified, gone = await take(events, 3)
            assert (added.type, added.kv, added.prev) == ("ADDED", created, None)
            assert (modified.type, modified.kv, modified.prev) == ("MODIFIED", updated, created)
            assert gone.type == "DELETED" and gone.kv == deleted and gone.kv.value == b"v2"
            assert gone.prev == updated and gone.revision == deleted.mod_revision
            assert (await take(twin, 3)) == [added, modified, gone]
            assert (await store.list("/e/")).kvs == []

    async def test_watchers_share_event_objects(self, store: Store) -> None:
        start = await store.current_revision()
        async with (
            watching(store, "/s/", start) as one,
            watching(store, "/s/", start) as two,
        ):
            await store.create("/s/1", b"")
            (a,) = await take(one, 1)
            (b,) = await take(two, 1)
            assert a is b  # encoded once for all watchers via Event.memo, never copied

    async def test_slow_watcher_overflows_alone(self, store: Store) -> None:
        start = await store.current_revision()
        async with (
            watching(store, "/o/", start) as slow,
            watching(store, "/o/", start) as fast,
        ):
            await store.create("/o/first", b"")
            await take(slow, 1)
            await take(fast, 1)
            total = self.QUEUE_SIZE * 3

            async def write() -> None:
                for i in range(total):
                    await store.create(f"/o/{i}", b"")

            writing = asyncio.create_task(write())
            assert len(await take(fast, total)) == total  # the fast one is never held back
            await writing
            with pytest.raises(WatchOverflowError):
                async with asyncio.timeout(TIMEOUT):
                    async for _ in slow:
                        pass

    async def test_closing_a_watch_releases_it(self, store: Store) -> None:
        hub = store._hub  # type: ignore[attr-defined]  # both backends fan out through one
        start = await store.current_revision()
        async with watching(store, "/r/", start) as events:
            await store.create("/r/1", b"")
            await take(events, 1)
            assert hub._subs
        assert not hub._subs

    async def test_close_ends_watches(self, store: Store) -> None:
        start = await store.current_revision()
        async with watching(store, "/c/", start) as events:
            await store.create("/c/1", b"")
            await take(events, 1)

            async def next_event() -> Event:
                return await anext(events)

            waiting = asyncio.create_task(next_event())
            await asyncio.sleep(0)  # one loop turn: the task now waits inside the watch
            assert not waiting.done()
            await store.close()
            with pytest.raises(StopAsyncIteration):
                async with asyncio.timeout(TIMEOUT):
                    await waiting
