"""Two sync endpoints over a lossy link that also reboots either end: the whole of satellite.md
§5.3 at once. Every event crosses exactly once, the newest state of every key arrives, a blob
activates, and nothing a peer can put on the wire stops an endpoint."""

from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path

import orjson
import pytest
from orbiter.orchestration.protocol.envelopes import ACK, MAX_ENVELOPE, Envelope, Priority
from orbiter.orchestration.protocol.receipts import Verdict
from orbiter.orchestration.protocol.syncing import SyncEndpoint
from orbiter.orchestration.protocol.transfers import NEED_TOPIC, Manifest, build_manifest

__all__: list[str] = []

_TABLES = """
CREATE TABLE IF NOT EXISTS events (id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, rv INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state_log (key TEXT NOT NULL, rv INTEGER NOT NULL);
"""


def _event(env: Envelope, db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO events VALUES (?)", (env.payload.decode(),))


def _state(env: Envelope, db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET rv = excluded.rv",
        (env.key, env.rv),
    )
    db.execute("INSERT INTO state_log VALUES (?, ?)", (env.key, env.rv))


def _open(tmp_path: Path, name: str, activated: list[Manifest]) -> SyncEndpoint:
    ep = SyncEndpoint(
        name,
        tmp_path / name,
        handlers={"event": _event, "state": _state},
        on_activated=activated.append,
        resend_after=3.0,
        synchronous="OFF",
    )
    ep.receipts.db.executescript(_TABLES)
    return ep


def test_a_lossy_link_with_reboots_applies_everything_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(7)
    names = ("ground", "sat")
    activated: list[Manifest] = []
    ends = {n: _open(tmp_path, n, activated) for n in names}
    blob = rng.randbytes(2600)
    manifest = build_manifest("model", "v1", blob, 500)
    ends["ground"].offer(manifest, lambda i: blob[i * 500 : (i + 1) * 500], now=0.0)
    events: dict[str, list[str]] = {n: [] for n in names}
    versions: dict[str, dict[str, int]] = {n: {} for n in names}
    frames = dropped = restarts = 0

    def exchange(t: float, drop: float) -> None:
        nonlocal frames, dropped
        for src, dst in (names, names[::-1]):
            for env in ends[src].outgoing(rng.randrange(600, 6000), t):
                frames += 1
                if rng.random() < drop:
                    dropped += 1
                    continue
                ends[dst].incoming_frame(env.encode(), t)

    try:
        for step in range(400):
            t = float(step)
            for n, ep in ends.items():
                for _ in range(rng.randrange(3)):
                    eid = f"{n}-{len(events[n])}"
                    assert ep.send("event", eid.encode(), priority=Priority.RESULT, now=t)
                    events[n].append(eid)
                if rng.random() < 0.5:
                    key = f"cfg/{rng.randrange(5)}"
                    rv = versions[n][key] = versions[n].get(key, 0) + 1
                    ep.send("state", b"", priority=Priority.STATUS, now=t, key=key, rv=rv)
            if step % 25 == 0:  # a pass ends: what was in flight goes again next time
                for ep in ends.values():
                    ep.link_down()
                    ep.link_up()
            exchange(t, drop=0.3)
            for n in names:
                if rng.random() < 0.04:
                    ends[n].close()
                    ends[n] = _open(tmp_path, n, activated)
                    restarts += 1
        # A clean link until both outboxes are empty.
        for step in range(400, 600):
            exchange(float(step), drop=0.0)
            if not any(len(ep.spool) or ep.receipts.acks_due() for ep in ends.values()):
                break
        assert all(len(ep.spool) == 0 for ep in ends.values())
        assert frames > 2000 and dropped > 500 and restarts >= 20
        for src, dst in (names, names[::-1]):
            db = ends[dst].receipts.db
            applied = [r[0] for r in db.execute("SELECT id FROM events ORDER BY rowid")]
            assert len(applied) == len(set(applied)), "an event was applied twice"
            assert sorted(applied) == sorted(events[src]) and len(applied) > 300
            assert dict(db.execute("SELECT key, rv FROM state")) == versions[src]
            log: dict[str, list[int]] = {}
            for key, rv in db.execute("SELECT key, rv FROM state_log ORDER BY rowid"):
                log.setdefault(key, []).append(rv)
            assert all(rvs == sorted(set(rvs)) for rvs in log.values()), "an older state won"
        assert activated == [manifest]
        assert ends["sat"].receiver.blob_path("model", "v1").read_bytes() == blob
    finally:
        for ep in ends.values():
            ep.close()


def _frame(header: dict[str, object], payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return struct.pack("!I", len(head)) + head + payload


def _good(**change: object) -> dict[str, object]:
    return {"src": "ground", "seq": 1, "pri": 1, "kind": "data", "topic": "event", **change}


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00",
        b"\xff\xff\xff\xff garbage",
        struct.pack("!I", 5) + b"{nope" + b"payload",
        struct.pack("!I", 2) + b"[]",
        _frame({**_good(), "crc": 0}, b"x"),
        _frame(_good(seq=-1, crc=0)),
        _frame(_good(seq=2**63, crc=0)),  # past SQLite's INTEGER, where it would be stored
        _frame(_good(seq="1", crc=0)),
        _frame(_good(pri=9, crc=0)),
        _frame(_good(kind="gossip", crc=0)),
        _frame(_good(meta=[1], crc=0)),
        _frame(_good(expires="soon", crc=0)),
        _frame(_good(topic=7, crc=0)),
        b"\x00" * (MAX_ENVELOPE + 1),
    ],
)
def test_a_malformed_frame_is_counted_and_dropped(tmp_path: Path, frame: bytes) -> None:
    activated: list[Manifest] = []
    ep = _open(tmp_path, "sat", activated)
    try:
        assert ep.incoming_frame(frame, 0.0) is None
        assert ep.bad_envelopes == 1 and not ep.receipts.acks_due()
        good = Envelope("ground", 1, Priority.RESULT, topic="event", payload=b"e1")
        assert ep.incoming_frame(good.encode(), 0.0) is Verdict.APPLIED
        assert [r[0] for r in ep.receipts.db.execute("SELECT id FROM events")] == ["e1"]
    finally:
        ep.close()


@pytest.mark.parametrize(
    ("kind", "topic", "payload"),
    [
        (ACK, "sat", b"not json"),
        (ACK, "sat", b"[[3, 1]]"),
        ("data", NEED_TOPIC, b"not json"),
        ("data", NEED_TOPIC, b"[1, 2]"),
        ("data", NEED_TOPIC, b'{"name": "model", "version": "v1", "chunks": 3}'),
    ],
)
def test_a_well_framed_but_malformed_payload_never_crashes(
    tmp_path: Path, kind: str, topic: str, payload: bytes
) -> None:
    activated: list[Manifest] = []
    ep = _open(tmp_path, "sat", activated)
    try:
        seq = ep.send("event", b"mine", priority=Priority.RESULT, now=0.0)
        assert seq is not None
        env = Envelope("ground", 5, Priority.CONTROL, kind, topic=topic, payload=payload)
        ep.incoming_frame(env.encode(), 0.0)
        assert ep.bad_envelopes == 1 and seq in ep.spool
    finally:
        ep.close()


def test_a_topic_nobody_handles_is_acknowledged_but_counted(tmp_path: Path) -> None:
    activated: list[Manifest] = []
    ep = _open(tmp_path, "sat", activated)
    try:
        odd = Envelope("ground", 3, Priority.RESULT, topic="telepathy", payload=b"?")
        assert ep.incoming_frame(odd.encode(), 0.0) is Verdict.APPLIED  # sent again: no use
        assert ep.unhandled == 1 and ep.receipts.acks_due()
        event = Envelope("ground", 4, Priority.RESULT, topic="event", payload=b"e")
        ep.incoming_frame(event.encode(), 0.0)
        assert ep.unhandled == 1
    finally:
        ep.close()


def test_an_ack_for_another_node_is_ignored(tmp_path: Path) -> None:
    activated: list[Manifest] = []
    ep = _open(tmp_path, "sat", activated)
    try:
        seq = ep.send("event", b"mine", priority=Priority.RESULT, now=0.0)
        assert seq is not None
        ack = Envelope("ground", 0, Priority.CONTROL, ACK, topic="sat-2", payload=b"[[0, 99]]")
        assert ep.incoming_frame(ack.encode(), 0.0) is None
        assert seq in ep.spool and ep.bad_envelopes == 0
        ack.topic = "sat"
        assert ep.incoming_frame(ack.encode(), 0.0) is None
        assert seq not in ep.spool
        assert ep.status()["pending"] == 0
    finally:
        ep.close()
