"""The spool is what makes "sent" mean "committed": these tests hold it to satellite.md §5.3
(priority order, coalescing, the reserved bulk share, TTL and quota shedding with counters,
restart safety and never-reused sequences) on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from orbiter.orchestration.protocol.envelopes import Envelope, Priority
from orbiter.orchestration.protocol.spooling import Spool

__all__: list[str] = []


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs."""


def _open(tmp_path: Path, **kw: object) -> Spool:
    return Spool(tmp_path / "spool.db", "sat-1", synchronous="OFF", **kw)  # type: ignore[arg-type]


def _must(seq: int | None) -> int:
    assert seq is not None
    return seq


def _seqs(envs: list[Envelope]) -> list[int]:
    return [e.seq for e in envs]


def test_take_drains_by_priority_then_deadline_then_age(tmp_path: Path) -> None:
    spool = _open(tmp_path, reserved_share=0.0)
    try:
        for pri in reversed(Priority):
            spool.put("t", b"x", priority=pri, now=0.0)
        taken = spool.take(1 << 20, now=0.0)
        assert [e.priority for e in taken] == list(Priority)
        a = _must(spool.put("r", b"a", priority=Priority.RESULT, now=1.0))
        b = _must(spool.put("r", b"b", priority=Priority.RESULT, now=1.0, ttl=100.0))
        c = _must(spool.put("r", b"c", priority=Priority.RESULT, now=1.0, ttl=50.0))
        d = _must(spool.put("r", b"d", priority=Priority.RESULT, now=1.0))
        assert _seqs(spool.take(1 << 20, now=2.0)) == [c, b, a, d]
    finally:
        spool.close()


def test_take_respects_the_budget_and_sends_an_oversized_message_alone(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    try:
        big = _must(spool.put("b", b"x" * 5000, priority=Priority.RESULT, now=0.0))
        small = _must(spool.put("s", b"y" * 10, priority=Priority.RESULT, now=0.0))
        assert _seqs(spool.take(100, now=0.0)) == [big]
        assert _seqs(spool.take(100, now=0.0)) == [small]
        assert spool.take(100, now=0.0) == []
    finally:
        spool.close()


def test_coalescing_replaces_unsent_and_in_flight_but_never_events(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    try:
        spool.put("status", b"v1", priority=Priority.STATUS, now=0.0, key="pod/a", rv=1)
        spool.put("status", b"v2", priority=Priority.STATUS, now=0.0, key="pod/a", rv=2)
        assert len(spool) == 1
        (sent,) = spool.take(1 << 20, now=0.0)
        assert (sent.payload, sent.rv) == (b"v2", 2)
        # In flight, then superseded: the ACK of the old one settles nothing, the new one goes.
        newest = _must(
            spool.put("status", b"v3", priority=Priority.STATUS, now=1.0, key="pod/a", rv=3)
        )
        assert spool.stats().counters["superseded"] == 2
        assert spool.acknowledge([sent.seq]) == 0
        assert _seqs(spool.take(1 << 20, now=1.0)) == [newest]
        r1 = _must(spool.put("result", b"r", priority=Priority.RESULT, now=2.0))
        r2 = _must(spool.put("result", b"r", priority=Priority.RESULT, now=2.0))
        assert r1 != r2 and r1 in spool and r2 in spool
        assert spool.stats().counters["superseded"] == 2
    finally:
        spool.close()


def test_reserved_share_feeds_bulk_without_delaying_results(tmp_path: Path) -> None:
    share = 0.10
    spool = _open(tmp_path, reserved_share=share)
    try:
        with spool.batch():
            for _ in range(3000):
                spool.put("frame", size=1000, priority=Priority.BULK, now=0.0)
        sent_bulk = sent_total = 0
        waiting: set[int] = set()
        for step in range(300):
            taken = spool.take(4000, now=float(step))
            got = set(_seqs(taken))
            # Every result put since the previous take goes in this one.
            assert waiting <= got, f"take {step} left results behind"
            for env in taken:
                sent_total += env.wire_size
                sent_bulk += env.wire_size if env.priority.is_bulk else 0
            spool.acknowledge(got)
            waiting = {
                _must(spool.put("result", b"r" * 400, priority=Priority.RESULT, now=step))
                for _ in range(5)
            }
        assert sent_bulk / sent_total >= share
        # Results alone would fill 5*~500 of each 4000-byte take: bulk got the rest and more.
        assert sent_bulk / sent_total > 0.3
    finally:
        spool.close()


def test_reserved_share_is_guaranteed_when_results_saturate(tmp_path: Path) -> None:
    share = 0.10
    spool = _open(tmp_path, reserved_share=share)
    try:
        with spool.batch():
            for _ in range(500):
                spool.put("frame", size=300, priority=Priority.BULK, now=0.0)
            for _ in range(2000):
                spool.put("result", b"r" * 300, priority=Priority.RESULT, now=0.0)
        bulk = total = 0
        for step in range(100):
            for env in spool.take(4000, now=float(step)):
                total += env.wire_size
                bulk += env.wire_size if env.priority.is_bulk else 0
        assert share <= bulk / total < 2 * share
    finally:
        spool.close()


def test_ttl_expiry_is_counted_by_class_and_survives_reopen(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    spool.put("r", b"a", priority=Priority.RESULT, now=0.0, ttl=10.0)
    spool.put("s", b"b", priority=Priority.STATUS, now=0.0, ttl=10.0, key="k")
    keep = _must(spool.put("s", b"c", priority=Priority.RESULT, now=0.0, ttl=100.0))
    assert spool.take(0, now=9.0)  # nothing expired yet: one message goes despite the budget
    spool.resend_all()
    assert _seqs(spool.take(1 << 20, now=10.0)) == [keep]
    assert spool.stats().counters == {"expired.result": 1, "expired.status": 1}
    spool.close()
    spool = _open(tmp_path)
    try:
        assert spool.stats().counters == {"expired.result": 1, "expired.status": 1}
        assert spool.expire(200.0) == 1
        assert spool.stats().counters["expired.result"] == 2 and len(spool) == 0
    finally:
        spool.close()


def test_quota_sheds_bulk_then_chunks_never_the_rest(tmp_path: Path) -> None:
    spool = _open(tmp_path, quota_bytes=10_000)
    try:
        bulk = [_must(spool.put("f", size=1000, priority=Priority.BULK, now=0.0)) for _ in range(6)]
        chunk = _must(spool.put("c", b"c" * 2000, priority=Priority.CHUNK, now=0.0))
        spool.put("s", b"s" * 1000, priority=Priority.STATUS, now=0.0, key="k")
        assert spool.stats().pending_bytes == 9000
        spool.put("ctl", b"x" * 2500, priority=Priority.CONTROL, now=0.0)
        # 1500 bytes over: the two oldest bulk messages go, nothing else.
        assert [s in spool for s in bulk] == [False, False, True, True, True, True]
        assert spool.stats().counters["shed.bulk"] == 2
        # A bulk message that fits only by shedding bulk replaces the oldest bulk.
        assert spool.put("f", size=1000, priority=Priority.BULK, now=0.0) is not None
        assert bulk[2] not in spool and spool.stats().counters["shed.bulk"] == 3
        spool.put("r", b"r" * 5000, priority=Priority.RESULT, now=0.0)
        # The remaining bulk went first (oldest first), then the chunk.
        assert chunk not in spool and not any(s in spool for s in bulk)
        assert spool.stats().counters["shed.bulk"] == 7
        assert spool.stats().counters["shed.chunk"] == 1
        by_class = spool.pending_by_class()
        assert by_class[Priority.BULK] == by_class[Priority.CHUNK] == 0
        # Control, results and status are kept even over the quota.
        spool.put("r", b"r" * 3000, priority=Priority.RESULT, now=0.0)
        assert spool.stats().pending_bytes > 10_000 and len(spool) == 4
        # Nothing left to shed for bulk: refused, counted, nothing else touched.
        assert spool.put("f", size=10, priority=Priority.BULK, now=0.0) is None
        assert spool.stats().counters["shed.bulk"] == 8 and len(spool) == 4
    finally:
        spool.close()


def test_acknowledge_and_ranges(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    try:
        seqs = [_must(spool.put("r", b"x", priority=Priority.RESULT, now=0.0)) for _ in range(10)]
        assert spool.acknowledge([seqs[0], seqs[0], 10_000]) == 1
        assert spool.acknowledge_ranges([(seqs[2], seqs[4]), (seqs[9], 1 << 60)]) == 4
        assert spool.acknowledge_ranges([(0, 1 << 62)]) == 5
        assert len(spool) == 0 and spool.stats().counters["acknowledged"] == 10
    finally:
        spool.close()


def test_resend_all_and_resend_after(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    try:
        a = _must(spool.put("r", b"a", priority=Priority.RESULT, now=0.0))
        b = _must(spool.put("r", b"b", priority=Priority.RESULT, now=0.0))
        assert _seqs(spool.take(1 << 20, now=0.0)) == [a, b]
        assert spool.take(1 << 20, now=0.0) == [] and spool.stats().in_flight == 2
        spool.acknowledge([a])
        spool.resend_all()
        assert _seqs(spool.take(1 << 20, now=0.0)) == [b]
    finally:
        spool.close()
    spool = Spool(tmp_path / "timed.db", "sat-1", resend_after=10.0, synchronous="OFF")
    try:
        a = _must(spool.put("r", b"a", priority=Priority.RESULT, now=0.0))
        assert _seqs(spool.take(1 << 20, now=0.0)) == [a]
        assert spool.take(1 << 20, now=9.9) == []
        assert _seqs(spool.take(1 << 20, now=10.0)) == [a]
        assert spool.take(1 << 20, now=15.0) == []  # the clock restarted at the resend
        spool.acknowledge([a])
        assert spool.take(1 << 20, now=100.0) == []
    finally:
        spool.close()


def test_batch_commits_together_and_rolls_back_consistently(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    try:
        before = _must(spool.put("r", b"0", priority=Priority.RESULT, now=0.0))
        spy = sqlite3.connect(tmp_path / "spool.db")
        try:
            with spool.batch():
                inside = [
                    _must(spool.put("r", b"1", priority=Priority.RESULT, now=0.0)) for _ in range(3)
                ]
                assert spy.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 1
            assert spy.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 4
        finally:
            spy.close()
        with pytest.raises(RuntimeError), spool.batch():
            doomed = _must(spool.put("s", b"2", priority=Priority.STATUS, now=0.0, key="pod/x"))
            spool.put("r", b"3", priority=Priority.RESULT, now=0.0)
            raise RuntimeError("application failed mid-batch")
        assert len(spool) == 4 and doomed not in spool and spool.stats().pending_bytes == 4
        # The rolled-back key is free again, and no handed-out sequence comes back.
        again = _must(spool.put("s", b"4", priority=Priority.STATUS, now=0.0, key="pod/x"))
        assert again > doomed
        assert _seqs(spool.take(1 << 20, now=0.0)) == [before, *inside, again]
    finally:
        spool.close()


def test_restart_resends_everything_in_the_same_order(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    for i, pri in enumerate([4, 1, 3, 0, 2, 1, 4, 0, 2, 3] * 3):
        spool.put("t", b"%d" % i, priority=Priority(pri), now=0.0, ttl=None if i % 4 else 50.0 + i)
    spool.acknowledge(_seqs(spool.take(1 << 20, now=0.0))[:3])
    # What a new contact would send, in order; then the same after a restart.
    spool.resend_all()
    spool.window_reset()
    expected = _seqs(spool.take(1 << 20, now=1.0))
    assert len(expected) == 27 and spool.stats().in_flight == 27
    spool.close()
    spool = _open(tmp_path)
    try:
        assert spool.stats().in_flight == 0
        assert _seqs(spool.take(1 << 20, now=1.0)) == expected
    finally:
        spool.close()


def test_sequences_are_never_reused(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    issued = [_must(spool.put("r", b"x", priority=Priority.RESULT, now=0.0)) for _ in range(1500)]
    spool.acknowledge_ranges([(0, 1 << 40)])
    assert len(spool) == 0
    spool.close()
    spool = _open(tmp_path)
    nxt = _must(spool.put("r", b"y", priority=Priority.RESULT, now=0.0))
    assert nxt > max(issued)
    spool.acknowledge([nxt])
    # A batch that fails across a sequence block: what it handed out is not handed out again.
    with pytest.raises(RuntimeError), spool.batch():
        failed = [
            _must(spool.put("r", b"z", priority=Priority.RESULT, now=0.0)) for _ in range(1100)
        ]
        raise RuntimeError("refused")
    nxt = _must(spool.put("r", b"y", priority=Priority.RESULT, now=0.0))
    assert nxt > max(failed)
    spool.acknowledge([nxt])
    # A crash in the middle of a batch that crosses a sequence block: nothing committed.
    with pytest.raises(Crash), spool.batch():
        for _ in range(1100):
            spool.put("r", b"z", priority=Priority.RESULT, now=0.0)
        raise Crash
    spool.close()
    spool = _open(tmp_path)
    try:
        assert len(spool) == 0
        after = _must(spool.put("r", b"w", priority=Priority.RESULT, now=0.0))
        assert after > nxt
        # The batch was never committed, so its numbers were never sent; committed ones are safe.
        assert after not in issued
        assert spool.floor == after
    finally:
        spool.close()


def test_floor_is_the_lowest_unsettled_sequence(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    try:
        assert spool.floor == 1
        a, b, c = (_must(spool.put("r", b"x", priority=Priority.RESULT, now=0.0)) for _ in range(3))
        assert spool.floor == a
        assert {e.floor for e in spool.take(1 << 20, now=0.0)} == {a}
        spool.acknowledge([a, c])
        assert spool.floor == b
        spool.acknowledge([b])
        assert spool.floor == c + 1
    finally:
        spool.close()


def test_constructor_refuses_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved_share"):
        Spool(tmp_path / "a.db", "s", reserved_share=1.0)
    with pytest.raises(ValueError, match="synchronous"):
        Spool(tmp_path / "b.db", "s", synchronous="EXTRA")
    spool = _open(tmp_path)
    try:
        with pytest.raises(ValueError, match="smaller than the payload"):
            spool.put("r", b"xx", priority=Priority.RESULT, now=0.0, size=1)
    finally:
        spool.close()
