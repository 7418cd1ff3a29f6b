from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from orbiter.orchestration.store import PostgresStore, SQLiteStore, Store, StoreError, open_store

from .suite import TIMEOUT, StoreSuite, take, watching


class TestSQLiteStore(StoreSuite):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        store = SQLiteStore(
            str(tmp_path / "state.db"), ring_size=self.RING_SIZE, watch_queue_size=self.QUEUE_SIZE
        )
        await store.start()
        yield store
        await store.close()


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = str(tmp_path / "data" / "state.db")  # the data dir is created
    store = SQLiteStore(path)
    await store.start()
    a = await store.create("/a", b"1")
    b = await store.update("/a", b"2", a.mod_revision)
    gone = await store.create("/gone", b"")
    await store.delete("/gone")
    await store.compact(gone.mod_revision)
    await store.close()
    with pytest.raises(StoreError):
        await store.get("/a")

    store = SQLiteStore(path)
    await store.start()
    try:
        assert await store.get("/a") == b
        assert await store.get("/gone") is None
        assert await store.compacted_revision() == gone.mod_revision
        current = await store.current_revision()
        assert current == gone.mod_revision + 1
        async with watching(store, "/", gone.mod_revision) as events:
            (deleted,) = await take(events, 1)  # replayed from the file
            assert deleted.type == "DELETED" and deleted.kv.key == "/gone"
        assert (await store.create("/b", b"")).mod_revision == current + 1  # never reused
    finally:
        await store.close()


CHILD = """
import asyncio, sys
from orbiter.orchestration.store import SQLiteStore

async def main(path):
    store = SQLiteStore(path)
    await store.start()
    value = b"x" * 1024
    numbers = iter(range(10**9))

    async def creator():
        for i in numbers:
            kv = await store.create(f"/k/{i:09d}", value)
            sys.stdout.write(f"{i} {kv.mod_revision}\\n")  # committed: report it
            sys.stdout.flush()

    await asyncio.gather(*(creator() for _ in range(50)))

asyncio.run(main(sys.argv[1]))
"""


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, path, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    acked: dict[int, int] = {}
    try:
        async with asyncio.timeout(60):
            while len(acked) < 3_000:  # mid-burst: 50 creators are still writing
                line = await child.stdout.readline()
                assert line, "the writer child died early"
                number, revision = line.split()
                acked[int(number)] = int(revision)
    finally:
        child.kill()  # SIGKILL: no close, no checkpoint
        async with asyncio.timeout(30):
            rest = await child.stdout.read()
            await child.wait()
    for line in rest.splitlines():  # reported before the kill landed
        number, revision = line.split()
        acked[int(number)] = int(revision)

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    store = SQLiteStore(path)
    await store.start()
    try:
        listed = {kv.key: kv for kv in (await store.list("/k/")).kvs}
        for n, rev in acked.items():
            kv = listed[f"/k/{n:09d}"]
            assert kv.mod_revision == rev and kv.value == b"x" * 1024
        assert await store.current_revision() >= max(acked.values())
    finally:
        await store.close()


async def test_bad_paths_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SQLiteStore(":memory:")
    (tmp_path / "file").write_text("")
    store = SQLiteStore(str(tmp_path / "file" / "state.db"))  # a file where a dir should be
    with pytest.raises(StoreError, match="cannot open"):
        await store.start()


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.start()
    await store.close()
    with pytest.raises(StoreError):
        await store.create("/a", b"")
    await store.close()  # idempotent


def test_open_store_urls(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/state.db")
    assert isinstance(store, SQLiteStore) and store.path == f"{tmp_path}/state.db"
    relative = open_store("sqlite://data/state.db")
    assert isinstance(relative, SQLiteStore) and relative.path == "data/state.db"
    for url in ("postgresql://u@127.0.0.1:5432/db", "postgres://u@localhost/db"):
        pg = open_store(url)
        assert isinstance(pg, PostgresStore) and pg.dsn == url
    for bad in ("mysql://x/y", "sqlite://", "sqlite:///", "state.db", "etcd://127.0.0.1:2379"):
        with pytest.raises(ValueError, match="store URL"):
            open_store(bad)


async def test_many_concurrent_creators_commit_in_groups(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            kvs = await asyncio.gather(*(store.create(f"/g/{i:04d}", b"v") for i in range(2_000)))
        revisions = sorted(kv.mod_revision for kv in kvs)
        assert revisions == list(range(revisions[0], revisions[0] + 2_000))  # dense, unique
        assert await store.count("/g/") == 2_000
    finally:
        await store.close()
