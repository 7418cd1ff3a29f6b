"""Receipts turn at-least-once transmission into exactly-once application (satellite.md §5.3
item 2): deduplication by (source, seq), newest resourceVersion wins, the application commits
with its receipt, and ACKs name only what is committed. Real SQLite files throughout."""

from __future__ import annotations

import itertools
import random
import sqlite3
from pathlib import Path

import orjson
import pytest
from orbiter.orchestration.protocol.envelopes import ACK, Envelope, EnvelopeError, Priority
from orbiter.orchestration.protocol.receipts import (
    MAX_ACK_RANGES,
    RangeSet,
    Receipts,
    Rejected,
    Verdict,
    ack_ranges,
)

__all__: list[str] = []


class Crash(BaseException):
    """Stands for the process dying inside the application."""


def _env(seq: int, *, key: str = "", rv: int = 0, floor: int = 0, body: bytes = b"") -> Envelope:
    return Envelope("sat-1", seq, Priority.STATUS, key=key, rv=rv, floor=floor, payload=body)


def _open(tmp_path: Path) -> Receipts:
    rc = Receipts(tmp_path / "receipts.db", "ground", synchronous="OFF")
    rc.db.execute("CREATE TABLE IF NOT EXISTS app (seq INTEGER, body BLOB)")
    return rc


def _store(env: Envelope, db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO app VALUES (?, ?)", (env.seq, env.payload))


def _app(rc: Receipts) -> list[tuple[int, bytes]]:
    return [(s, bytes(b)) for s, b in rc.db.execute("SELECT seq, body FROM app ORDER BY rowid")]


def _acked(rc: Receipts) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for env in rc.take_acks(0.0):
        assert env.kind == ACK and env.topic == "sat-1" and env.source == "ground"
        out += ack_ranges(env)
    return out


def test_duplicates_are_applied_once_also_after_reopen(tmp_path: Path) -> None:
    rc = _open(tmp_path)
    assert rc.receive(_env(1, body=b"a"), _store) is Verdict.APPLIED
    assert rc.receive(_env(1, body=b"a"), _store) is Verdict.DUPLICATE
    assert _acked(rc) == [(1, 1)]
    rc.close()
    rc = _open(tmp_path)
    try:
        assert rc.receive(_env(1, body=b"a"), _store) is Verdict.DUPLICATE
        assert _acked(rc) == [(1, 1)]  # a duplicate is acknowledged again
        assert rc.receive(_env(2, body=b"b"), _store) is Verdict.APPLIED
        assert _app(rc) == [(1, b"a"), (2, b"b")]
        assert rc.counters == {"duplicate": 1, "applied": 1}
    finally:
        rc.close()


def test_newest_resource_version_wins(tmp_path: Path) -> None:
    rc = _open(tmp_path)
    try:
        assert rc.receive(_env(2, key="pod/a", rv=5, body=b"v5"), _store) is Verdict.APPLIED
        assert rc.receive(_env(1, key="pod/a", rv=3, body=b"v3"), _store) is Verdict.STALE
        assert rc.receive(_env(3, key="pod/a", rv=5, body=b"v5'"), _store) is Verdict.STALE
        assert rc.version("sat-1", "pod/a") == 5
        assert _acked(rc) == [(1, 3)]  # stale ones are acknowledged, or they come forever
        assert rc.receive(_env(1, key="pod/a", rv=3), _store) is Verdict.DUPLICATE  # recorded
        assert rc.receive(_env(4, key="pod/a", rv=6, body=b"v6"), _store) is Verdict.APPLIED
        assert _app(rc) == [(2, b"v5"), (4, b"v6")]
    finally:
        rc.close()
    rc = _open(tmp_path)
    try:
        assert rc.version("sat-1", "pod/a") == 6
        assert rc.receive(_env(5, key="pod/a", rv=6), _store) is Verdict.STALE
    finally:
        rc.close()


def test_a_crash_inside_apply_leaves_neither_row_nor_receipt(tmp_path: Path) -> None:
    def crashing(env: Envelope, db: sqlite3.Connection) -> None:
        _store(env, db)
        raise Crash

    rc = _open(tmp_path)
    with pytest.raises(Crash):
        rc.receive(_env(1, key="k", rv=1, body=b"x"), crashing)
    assert _app(rc) == [] and _acked(rc) == [] and rc.version("sat-1", "k") is None
    rc.close()
    rc = _open(tmp_path)
    try:
        assert rc.db.execute("SELECT COUNT(*) FROM received").fetchone()[0] == 0
        assert rc.receive(_env(1, key="k", rv=1, body=b"x"), _store) is Verdict.APPLIED
        assert rc.receive(_env(1, key="k", rv=1, body=b"x"), _store) is Verdict.DUPLICATE
        assert _app(rc) == [(1, b"x")]
    finally:
        rc.close()


def test_a_crash_inside_a_batch_rolls_back_memory_too(tmp_path: Path) -> None:
    rc = _open(tmp_path)
    try:
        assert rc.receive(_env(1, body=b"a"), _store) is Verdict.APPLIED
        _acked(rc)
        with pytest.raises(Crash), rc.batch():
            assert rc.receive(_env(2, key="k", rv=1, body=b"b"), _store) is Verdict.APPLIED
            raise Crash
        # Nothing of the batch is on disk: nothing of it may be acknowledged or deduplicated.
        assert _acked(rc) == [] and rc.version("sat-1", "k") is None
        assert rc.receive(_env(2, key="k", rv=1, body=b"b"), _store) is Verdict.APPLIED
        assert _app(rc) == [(1, b"a"), (2, b"b")]
    finally:
        rc.close()


def test_rejected_is_neither_recorded_nor_acknowledged(tmp_path: Path) -> None:
    def refuse(env: Envelope, db: sqlite3.Connection) -> None:
        _store(env, db)
        raise Rejected("not yet")

    rc = _open(tmp_path)
    try:
        assert rc.receive(_env(1, key="k", rv=1), refuse) is Verdict.REJECTED
        assert _acked(rc) == [] and _app(rc) == [] and rc.version("sat-1", "k") is None
        assert rc.receive(_env(1, key="k", rv=1, body=b"ok"), _store) is Verdict.APPLIED
        assert _app(rc) == [(1, b"ok")] and _acked(rc) == [(1, 1)]
    finally:
        rc.close()


def test_an_ordinary_failure_is_recorded_once_and_acknowledged(tmp_path: Path) -> None:
    calls = []

    def broken(env: Envelope, db: sqlite3.Connection) -> None:
        calls.append(env.seq)
        _store(env, db)
        raise KeyError("bug in the application")

    rc = _open(tmp_path)
    try:
        assert rc.receive(_env(1, key="k", rv=1), broken) is Verdict.FAILED
        assert rc.receive(_env(1, key="k", rv=1), broken) is Verdict.DUPLICATE
        assert calls == [1] and _app(rc) == [] and _acked(rc) == [(1, 1)]
        assert rc.version("sat-1", "k") is None  # nothing applied, so the version stays
        assert rc.counters == {"failed": 1, "duplicate": 1}
    finally:
        rc.close()


def test_floors_prune_the_received_table(tmp_path: Path) -> None:
    rc = _open(tmp_path)
    try:
        for seq in range(1, 11):
            rc.receive(_env(seq, floor=1), _store)
        count = "SELECT COUNT(*) FROM received WHERE source = 'sat-1'"
        assert rc.db.execute(count).fetchone()[0] == 10
        rc.receive(_env(11, floor=8), _store)
        assert [r[0] for r in rc.db.execute("SELECT seq FROM received ORDER BY seq")] == [
            8,
            9,
            10,
            11,
        ]
        assert rc.receive(_env(3, floor=1), _store) is Verdict.DUPLICATE
        rc.close()
        rc = _open(tmp_path)
        assert rc.receive(_env(5, floor=1), _store) is Verdict.DUPLICATE
        assert rc.receive(_env(9, floor=8), _store) is Verdict.DUPLICATE
        assert len(_app(rc)) == 11
    finally:
        rc.close()


def test_ack_ranges_merge_and_are_capped(tmp_path: Path) -> None:
    rc = _open(tmp_path)
    try:
        for seq in (1, 2, 3, 5, 6, 8):
            rc.receive(_env(seq))
        assert _acked(rc) == [(1, 3), (5, 6), (8, 8)]
        assert not rc.acks_due()
        odd = list(range(101, 101 + 2 * 1200, 2))
        for seq in odd:
            rc.receive(_env(seq))
        sizes = []
        seen: set[int] = set()
        while rc.acks_due():
            (ack,) = rc.take_acks(0.0)
            ranges = ack_ranges(ack)
            sizes.append(len(ranges))
            for lo, hi in ranges:
                seen |= set(range(lo, hi + 1))
        assert sizes == [MAX_ACK_RANGES, MAX_ACK_RANGES, 1200 - 2 * MAX_ACK_RANGES]
        assert seen == set(odd)
    finally:
        rc.close()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json", "not JSON"),
        (b'{"a": 1}', "must be a list"),
        (orjson.dumps([[1, 2]] * (MAX_ACK_RANGES + 1)), "at most 512"),
        (b"[[1, 2, 3]]", r"\[1, 2, 3\] is not \[low, high\]"),
        (b"[[-1, 2]]", "is not"),
        (b"[[5, 2]]", "is not"),
        (b'[["1", 2]]', "is not"),
        (b"[[true, 2]]", "is not"),
        (b"[[1.5, 2]]", "is not"),
        (b"[7]", "7 is not"),
    ],
)
def test_ack_ranges_refuses_malformed_payloads(payload: bytes, error: str) -> None:
    env = Envelope("ground", 0, Priority.CONTROL, ACK, topic="sat-1", payload=payload)
    with pytest.raises(EnvelopeError, match=error):
        ack_ranges(env)


def test_rangeset_matches_a_python_set() -> None:
    rng = random.Random(20261127)
    for _ in range(50):
        ranges = RangeSet()
        model: set[int] = set()
        for _ in range(rng.randrange(1, 300)):
            n = rng.randrange(0, 400)
            ranges.add(n)
            model.add(n)
            if rng.random() < 0.02:
                floor = rng.randrange(0, 400)
                ranges.prune_below(floor)
                model = {m for m in model if m >= floor}
        pairs = ranges.ranges()
        assert len(ranges) == len(pairs)
        expanded = [m for lo, hi in pairs for m in range(lo, hi + 1)]
        assert expanded == sorted(model)
        # Merged: each range is separated from the next by at least one missing number.
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(pairs))
        assert all((m in ranges) == (m in model) for m in range(-1, 402))
