"""Resumable blob transfers (satellite.md §5.3 item 6): a blob crosses several passes without
an acknowledged chunk ever being sent again, bad chunks (in transit or on disk) are caught and
fetched again, activation is atomic and the previous version stays for rollback."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from orbiter.orchestration.protocol.envelopes import Envelope
from orbiter.orchestration.protocol.receipts import Verdict
from orbiter.orchestration.protocol.syncing import SyncEndpoint
from orbiter.orchestration.protocol.transfers import (
    CHUNK_TOPIC,
    NEED_TOPIC,
    Manifest,
    build_manifest,
)

__all__: list[str] = []

CHUNK = 1000
# Returns the frame to deliver, or None to lose it.
Tamper = Callable[[Envelope, bytes], bytes | None]


def _blob(seed: int, size: int = 9500) -> bytes:
    return random.Random(seed).randbytes(size)


def _reader(data: bytes) -> Callable[[int], bytes]:
    return lambda i: data[i * CHUNK : (i + 1) * CHUNK]


def _endpoint(tmp_path: Path, name: str, activated: list[Manifest] | None = None) -> SyncEndpoint:
    return SyncEndpoint(
        name,
        tmp_path / name,
        synchronous="OFF",
        on_activated=None if activated is None else activated.append,
    )


def _pump(
    src: SyncEndpoint, dst: SyncEndpoint, budget: int, now: float, tamper: Tamper | None = None
) -> list[tuple[Envelope, Verdict | None]]:
    """Send what ``src`` chooses to ``dst`` as frames; what arrived and its verdict."""
    out = []
    for env in src.outgoing(budget, now):
        frame: bytes | None = env.encode()
        if tamper is not None and frame is not None:
            frame = tamper(env, frame)
        if frame is not None:
            out.append((env, dst.incoming_frame(frame, now)))
    return out


def _chunk_index(env: Envelope) -> int:
    index = env.meta["index"]
    assert isinstance(index, int)
    return index


def _contact(
    ground: SyncEndpoint,
    sat: SyncEndpoint,
    now: float,
    budget: int = 1 << 20,
    down: Tamper | None = None,
    up: Tamper | None = None,
) -> list[Envelope]:
    """One pass: ground sends within ``budget``, the satellite answers, the link drops."""
    ground.link_up()
    sat.link_up()
    sent = [env for env, _ in _pump(ground, sat, budget, now, down)]
    _pump(sat, ground, 1 << 20, now, up)
    for ack in ground.receipts.take_acks(now):  # only the ACKs: the pass is over for data
        sat.incoming_frame(ack.encode(), now)
    ground.link_down()
    sat.link_down()
    return [env for env in sent if env.topic == CHUNK_TOPIC]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "../etc"}, "name"),
        ({"version": ""}, "version"),
        ({"size": -1}, "size"),
        ({"size": "9500"}, "size"),
        ({"chunkSize": 0}, "chunk_size"),
        ({"chunkSize": None}, "chunkSize"),
        ({"sha256": "abc"}, "sha256"),
        ({"chunks": "abc"}, "chunks"),
        ({"chunks": ["00" * 32]}, "chunk digests"),
        ({"chunks": ["zz"] * 10}, r"chunks\[0\]"),
    ],
)
def test_manifest_validation_names_the_field(change: dict[str, Any], field: str) -> None:
    good = build_manifest("model", "v1", _blob(1), CHUNK).to_dict()
    assert Manifest.from_dict(good) == build_manifest("model", "v1", _blob(1), CHUNK)
    with pytest.raises(ValueError, match=field):
        Manifest.from_dict({**good, **change})


def test_manifest_missing_field_or_not_an_object() -> None:
    good = build_manifest("model", "v1", _blob(1), CHUNK).to_dict()
    del good["sha256"]
    with pytest.raises(ValueError, match="missing 'sha256'"):
        Manifest.from_dict(good)
    with pytest.raises(ValueError, match="must be an object"):
        Manifest.from_dict([1, 2])


def test_a_blob_resumes_over_passes_and_never_resends_an_acknowledged_chunk(
    tmp_path: Path,
) -> None:
    data = _blob(2)
    manifest = build_manifest("model", "v1", data, CHUNK)
    activated: list[Manifest] = []
    ground, sat = _endpoint(tmp_path, "ground"), _endpoint(tmp_path, "sat", activated)
    ground.offer(manifest, _reader(data), now=0.0)
    acknowledged: set[int] = set()
    sent: Counter[int] = Counter()
    lost_acks: set[int] = set()

    def drop_acks(env: Envelope, frame: bytes) -> bytes | None:
        return None if env.kind == "ack" else frame

    for n in range(20):
        if n == 3:  # the satellite reboots mid-transfer: its bitmap is on disk
            have = sat.receiver.have(manifest)
            sat.close()
            sat = _endpoint(tmp_path, "sat", activated)
            assert sat.receiver.have(manifest) == have and 0 < len(have) < 10
        chunks = _contact(ground, sat, float(n), 2600, up=drop_acks if n == 1 else None)
        for env in chunks:
            assert env.seq not in acknowledged, f"pass {n} resent acknowledged #{env.seq}"
            sent[_chunk_index(env)] += 1
        if n == 1:
            lost_acks = {_chunk_index(env) for env in chunks}
        acknowledged |= {env.seq for env in chunks if env.seq not in ground.spool}
        if activated:
            break
    try:
        assert activated == [manifest] and sat.receiver.active("model") == ("v1", None)
        blob = sat.receiver.blob_path("model", "v1").read_bytes()
        assert hashlib.sha256(blob).hexdigest() == manifest.sha256 and blob == data
        # Every chunk crossed once, except those whose ACKs were lost on pass 1.
        assert lost_acks and sent == {i: 1 + (i in lost_acks) for i in range(10)}
        assert len(ground.spool) == 0
    finally:
        ground.close()
        sat.close()


def test_a_blob_over_the_receivers_cap_is_refused(tmp_path: Path) -> None:
    sat = _endpoint(tmp_path, "sat")
    ground = _endpoint(tmp_path, "ground")
    sat.receiver.max_blob_bytes = 5000  # the peer decides what it offers, not our disk
    data = _blob(3)
    manifest = build_manifest("model", "v1", data, CHUNK)
    try:
        ground.offer(manifest, _reader(data), now=0.0)
        for n in range(5):
            _contact(ground, sat, float(n), budget=1 << 20)
        assert sat.receiver.refused >= 1
        assert sat.receiver.manifest("model", "v1") is None
        assert sat.receiver.active("model") == (None, None)
        assert not any((sat.receiver.directory / "partial").iterdir())
    finally:
        ground.close()
        sat.close()


def test_a_chunk_corrupted_in_transit_is_refused_and_sent_again(tmp_path: Path) -> None:
    data = _blob(3)
    manifest = build_manifest("model", "v1", data, CHUNK)
    activated: list[Manifest] = []
    ground, sat = _endpoint(tmp_path, "ground"), _endpoint(tmp_path, "sat", activated)
    verdicts: list[Verdict | None] = []

    def corrupt(env: Envelope, frame: bytes) -> bytes | None:
        if env.topic == CHUNK_TOPIC and env.meta["index"] == 2:
            env.payload = bytes([env.payload[0] ^ 1]) + env.payload[1:]
            bad = env.encode()  # a valid frame: the envelope CRC matches the altered payload
            verdicts.append(sat.incoming_frame(bad, 0.0))
            return None
        return frame

    try:
        ground.offer(manifest, _reader(data), now=0.0)
        first = _contact(ground, sat, 0.0, down=corrupt)
        assert len(first) == 9 and verdicts == [Verdict.REJECTED]
        assert sat.receiver.refused == 1 and sat.receiver.missing(manifest) == [2]
        assert not activated and not sat.receiver.blob_path("model", "v1").exists()
        again = _contact(ground, sat, 1.0)
        assert [_chunk_index(e) for e in again] == [2]
        assert activated == [manifest]
        blob = sat.receiver.blob_path("model", "v1").read_bytes()
        assert hashlib.sha256(blob).hexdigest() == manifest.sha256
    finally:
        ground.close()
        sat.close()


def test_a_chunk_corrupted_on_disk_is_caught_and_fetched_again(tmp_path: Path) -> None:
    data = _blob(4)
    manifest = build_manifest("model", "v1", data, CHUNK)
    activated: list[Manifest] = []
    ground, sat = _endpoint(tmp_path, "ground"), _endpoint(tmp_path, "sat", activated)

    def hold_last(env: Envelope, frame: bytes) -> bytes | None:
        return None if env.topic == CHUNK_TOPIC and env.meta["index"] == 9 else frame

    try:
        ground.offer(manifest, _reader(data), now=0.0)
        _contact(ground, sat, 0.0, down=hold_last)
        assert sat.receiver.missing(manifest) == [9]
        (sat.directory / "transfers" / "partial" / "model" / "v1" / "1").write_bytes(b"rot")
        needs: list[Envelope] = []

        def watch(env: Envelope, frame: bytes) -> bytes | None:
            if env.topic == NEED_TOPIC:
                needs.append(env)
                assert not activated and not sat.receiver.blob_path("model", "v1").exists()
                assert sat.receiver.missing(manifest) == [1]
            return frame

        second = _contact(ground, sat, 1.0, up=watch)
        # The last chunk completed the bitmap, activation found chunk 1 bad and asked for it.
        assert [_chunk_index(e) for e in second] == [9] and len(needs) == 1
        assert not activated
        third = _contact(ground, sat, 2.0)
        assert [_chunk_index(e) for e in third] == [1]
        assert activated == [manifest]
        blob = sat.receiver.blob_path("model", "v1").read_bytes()
        assert hashlib.sha256(blob).hexdigest() == manifest.sha256
        assert not list((sat.directory / "transfers" / "blobs").rglob("*.tmp"))
    finally:
        ground.close()
        sat.close()


def test_activation_keeps_the_previous_version_for_rollback(tmp_path: Path) -> None:
    activated: list[Manifest] = []
    ground, sat = _endpoint(tmp_path, "ground"), _endpoint(tmp_path, "sat", activated)
    blobs = {"v1": _blob(5), "v2": _blob(6, 4321)}
    try:
        for n, (version, data) in enumerate(blobs.items()):
            manifest = build_manifest("model", version, data, CHUNK)
            ground.offer(manifest, _reader(data), now=n)
            _contact(ground, sat, float(n))
        assert [m.version for m in activated] == ["v1", "v2"]
        assert sat.receiver.active("model") == ("v2", "v1")
        assert sat.receiver.rollback("model") == "v1"
        assert sat.receiver.active("model") == ("v1", "v2")
        for version, data in blobs.items():
            assert sat.receiver.blob_path("model", version).read_bytes() == data
        with pytest.raises(LookupError, match="no previous version"):
            sat.receiver.rollback("other")
    finally:
        ground.close()
        sat.close()
    sat = _endpoint(tmp_path, "sat")
    try:
        assert sat.receiver.active("model") == ("v1", "v2")  # persisted
    finally:
        sat.close()


def test_activation_never_leaves_a_partial_blob(tmp_path: Path) -> None:
    activated: list[Manifest] = []
    sat = _endpoint(tmp_path, "sat", activated)
    ground = _endpoint(tmp_path, "ground")
    data = _blob(7)
    manifest = build_manifest("model", "v3", data, CHUNK)
    target = sat.receiver.blob_path("model", "v3")
    try:
        ground.offer(manifest, _reader(data), now=0.0)
        # Chunks arrive one per pass; the target appears only whole, in one step.
        for n in range(30):
            _contact(ground, sat, float(n), budget=1)
            if activated:
                break
            assert not target.exists()
        assert target.read_bytes() == data
        assert sorted(p.name for p in target.parent.iterdir()) == ["current", "v3"]
        assert (target.parent / "current").read_bytes() == data  # the link to the active one
        assert sat.receiver.activate(manifest) == []  # idempotent
        assert sat.receiver.active("model") == ("v3", None)
    finally:
        ground.close()
        sat.close()
