"""Receipts: exactly-once application of what a peer's spool sends.

Transmission is at least once (the spool resends until acknowledged), so the receiver
deduplicates by ``(source, seq)`` and, for state under a key, applies only a newer
resourceVersion (KubeEdge's ObjectSync rule): replays and reordering are harmless. The
record of a receipt is committed in the same SQLite transaction as the application when the
application writes to the same database (``apply(envelope, db)``), so a crash can neither
apply twice nor lose a message that was acknowledged: acknowledgements are only built from
committed receipts.

Each envelope carries its sender's *floor*, the lowest sequence it may still send; receipts
below the floor are forgotten, so the record stays as small as what is in flight.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from .envelopes import ACK, Envelope, EnvelopeError, Priority
from .transactions import transaction

__all__ = ["RangeSet", "Receipts", "Rejected", "Verdict", "ack_ranges"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS floors (source TEXT PRIMARY KEY, floor INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS received (
    source TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (source, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    source TEXT NOT NULL, key TEXT NOT NULL, rv INTEGER NOT NULL, PRIMARY KEY (source, key)
) WITHOUT ROWID;
"""

log = logging.getLogger(__name__)

MAX_ACK_RANGES = 512  # an ACK names at most this many ranges; the rest go in the next one

Apply = Callable[[Envelope, sqlite3.Connection], None]


class Verdict(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # this (source, seq) was received before
    STALE = "stale"  # received, but a newer version of its key was applied already
    REJECTED = "rejected"  # the application refused it; not recorded, so it comes again
    FAILED = "failed"  # the application failed on it; recorded (it would fail again) and counted


class Rejected(Exception):
    """Raised by an ``apply`` that cannot take the message now (e.g. a chunk that fails its
    digest): nothing is recorded and no ACK goes back, so the sender sends it again."""


class RangeSet:
    """Sorted, merged, inclusive integer ranges."""

    def __init__(self) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []

    def __contains__(self, n: int) -> bool:
        i = bisect.bisect_right(self._lo, n) - 1
        return i >= 0 and n <= self._hi[i]

    def add(self, n: int) -> None:
        if n in self:
            return
        i = bisect.bisect_right(self._lo, n)
        joins_left = i > 0 and self._hi[i - 1] == n - 1
        joins_right = i < len(self._lo) and self._lo[i] == n + 1
        if joins_left and joins_right:
            self._hi[i - 1] = self._hi[i]
            del self._lo[i], self._hi[i]
        elif joins_left:
            self._hi[i - 1] = n
        elif joins_right:
            self._lo[i] = n
        else:
            self._lo.insert(i, n)
            self._hi.insert(i, n)

    @classmethod
    def from_ranges(cls, ranges: list[tuple[int, int]]) -> RangeSet:
        """From ranges already sorted and merged (as ``ranges()`` gives): no adding one by
        one, since a range may be huge."""
        made = cls()
        made._lo = [lo for lo, _ in ranges]
        made._hi = [hi for _, hi in ranges]
        return made

    def prune_below(self, floor: int) -> None:
        while self._lo and self._hi[0] < floor:
            del self._lo[0], self._hi[0]
        if self._lo and self._lo[0] < floor:
            self._lo[0] = floor

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._lo, self._hi, strict=True))

    def __len__(self) -> int:
        return len(self._lo)


def ack_ranges(envelope: Envelope) -> list[tuple[int, int]]:
    """The inclusive ranges an ACK envelope acknowledges (EnvelopeError if malformed)."""
    try:
        data = orjson.loads(envelope.payload)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"ACK payload is not JSON: {exc}") from None
    if not isinstance(data, list) or len(data) > MAX_ACK_RANGES:
        raise EnvelopeError(f"ACK payload must be a list of at most {MAX_ACK_RANGES} ranges")
    out = []
    for item in data:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item)
            or item[0] > item[1]
        ):
            raise EnvelopeError(f"ACK range {item!r} is not [low, high]")
        out.append((item[0], item[1]))
    return out


class Receipts:
    """What this end received from each source; ``receive`` applies each message once."""

    def __init__(self, path: Path | str, owner: str, *, synchronous: str = "FULL") -> None:
        self.owner = owner  # the name ACKs are sent as
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.executescript(_SCHEMA)
        self.counters: dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        """(Re)build the in-memory mirror of what is committed."""
        self._floors: dict[str, int] = dict(self.db.execute("SELECT source, floor FROM floors"))
        self._seen: dict[str, RangeSet] = {}
        for source, seq in self.db.execute("SELECT source, seq FROM received ORDER BY 1, 2"):
            self._seen.setdefault(source, RangeSet()).add(seq)
        self._versions: dict[tuple[str, str], int] = {
            (s, k): rv for s, k, rv in self.db.execute("SELECT source, key, rv FROM versions")
        }
        # Receipts to acknowledge, per source; in memory: after a crash the sender resends,
        # the duplicate is acknowledged again.
        self._to_ack: dict[str, RangeSet] = {}

    def seen(self, envelope: Envelope) -> bool:
        """True if ``envelope`` was received before (a repeat to acknowledge, not apply).
        For applications that cannot run inside the receipt's transaction (they await):
        check ``seen``, apply, then ``receive`` without ``apply`` to record it."""
        source, seq = envelope.ident
        return seq < self._floors.get(source, 0) or seq in self._seen.get(source, ())

    def receive(self, envelope: Envelope, apply: Apply | None = None) -> Verdict:
        source, seq = envelope.ident
        seen = self._seen.setdefault(source, RangeSet())
        floor = self._floors.get(source, 0)
        if self.seen(envelope):
            self._ack_later(source, seq)
            self._note("duplicate")
            return Verdict.DUPLICATE
        vkey = (source, envelope.key)
        newest = self._versions.get(vkey) if envelope.key else None
        stale = newest is not None and envelope.rv <= newest
        try:
            with transaction(self.db):
                if not stale and apply is not None:
                    apply(envelope, self.db)
                self.db.execute("INSERT INTO received VALUES (?, ?)", (source, seq))
                if envelope.key and not stale:
                    self.db.execute(
                        "INSERT INTO versions VALUES (?, ?, ?) "
                        "ON CONFLICT(source, key) DO UPDATE SET rv = excluded.rv",
                        (source, envelope.key, envelope.rv),
                    )
                verdict = Verdict.STALE if stale else Verdict.APPLIED
        except Rejected:
            self._note("rejected")
            return Verdict.REJECTED
        except Exception:
            # The same bytes would fail the same way: keep the receipt (so it is acknowledged
            # and not sent forever) without the application, and count it.
            log.exception("applying %s#%d (%s) failed", source, seq, envelope.topic)
            with transaction(self.db):
                self.db.execute("INSERT INTO received VALUES (?, ?)", (source, seq))
            verdict = Verdict.FAILED
            stale = True  # nothing applied: the key's version stays
        self._note(verdict.value)
        seen.add(seq)
        if envelope.key and not stale:
            self._versions[vkey] = envelope.rv
        self._ack_later(source, seq)
        if envelope.floor > floor:
            self._raise_floor(source, envelope.floor)
        return verdict

    def _raise_floor(self, source: str, floor: int) -> None:
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO floors VALUES (?, ?) "
                "ON CONFLICT(source) DO UPDATE SET floor = excluded.floor",
                (source, floor),
            )
            self.db.execute("DELETE FROM received WHERE source = ? AND seq < ?", (source, floor))
        self._floors[source] = floor
        self._seen[source].prune_below(floor)

    def _ack_later(self, source: str, seq: int) -> None:
        self._to_ack.setdefault(source, RangeSet()).add(seq)

    def acks_due(self) -> bool:
        return any(len(r) for r in self._to_ack.values())

    def take_acks(self, now: float) -> list[Envelope]:
        """ACK envelopes (one per source) for what was received since the last ones."""
        out = []
        for source, pending in list(self._to_ack.items()):
            ranges = pending.ranges()
            if not ranges:
                continue
            send, keep = ranges[:MAX_ACK_RANGES], ranges[MAX_ACK_RANGES:]
            self._to_ack[source] = RangeSet.from_ranges(keep)
            payload = orjson.dumps([[lo, hi] for lo, hi in send])
            out.append(
                Envelope(
                    self.owner,
                    0,
                    Priority.CONTROL,
                    ACK,
                    topic=source,  # whose messages this acknowledges
                    created=now,
                    payload=payload,
                )
            )
        return out

    def version(self, source: str, key: str) -> int | None:
        return self._versions.get((source, key))

    def _note(self, name: str) -> None:
        """Counts since this process opened the receipts (the applications keep the truth)."""
        self.counters[name] = self.counters.get(name, 0) + 1

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit every ``receive`` inside as one transaction (each is a savepoint in it)."""
        try:
            with transaction(self.db):
                yield
        except BaseException:
            # The batch's receipts were rolled back: memory must forget them too, and no ACK
            # may name one. Pending ACKs of earlier receipts go as well; the sender resends
            # those and the duplicates are acknowledged again.
            self._load()
            raise

    def close(self) -> None:
        self.db.close()
