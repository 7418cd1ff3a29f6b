"""The spool: a durable, prioritised, coalescing outbox for one direction of a link.

A message counts as sent only once it is committed here (KubeEdge's "persist, then ACK",
satellite.md §5.3). It stays until the peer's receipt names its sequence, so a message cut
off by the end of a pass, a lost ACK or a crash on either side is sent again; the peer's
receipts make that harmless. Within a contact the classes drain in priority order, but the
bulk classes (chunks, bulk data) are guaranteed ``reserved_share`` of the bytes sent while
they have something to send, so bulk never starves. Expired messages are dropped with a
counter, and when storage runs past its quota bulk is shed first, oldest first; control,
results and status are never shed before their TTL.

State is one SQLite file. ``synchronous`` is FULL for the hubs (a power cut loses nothing
committed); a simulator may pass OFF, which still survives a process crash.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from .envelopes import DATA, Envelope, Priority
from .transactions import transaction

__all__ = ["Spool", "SpoolStats"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    key TEXT,
    rv INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    size INTEGER NOT NULL,
    meta BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS spool_key ON spool (key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

log = logging.getLogger(__name__)

_INF = float("inf")
_SEQ_BLOCK = 1024


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending: int
    pending_bytes: int
    in_flight: int
    counters: dict[str, int]


@dataclass(slots=True)
class _Row:
    priority: Priority
    deadline: float
    size: int
    wire: int
    key: str | None


class Spool:
    """Outgoing messages of ``source``; ``take`` picks what to send next within a byte budget."""

    def __init__(
        self,
        path: Path | str,
        source: str,
        *,
        quota_bytes: int | None = None,
        reserved_share: float = 0.10,
        resend_after: float | None = None,
        synchronous: str = "FULL",
    ) -> None:
        if not 0.0 <= reserved_share < 1.0:
            raise ValueError(f"reserved_share must be in [0, 1), not {reserved_share}")
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
        self.source = source
        self.quota_bytes = quota_bytes
        self.reserved_share = reserved_share
        self.resend_after = resend_after  # None: only when the link goes down
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        self._batching = False
        self._load_state()
        self.window_reset()

    def _load_state(self) -> None:
        """(Re)build the in-memory mirror of the table's scheduling columns."""
        self._counters: dict[str, int] = dict(self._db.execute("SELECT name, value FROM counters"))
        self._rows: dict[int, _Row] = {}
        self._keys: dict[str, int] = {}
        self._due: list[list[tuple[float, int]]] = [[] for _ in Priority]
        self._flight: dict[int, float] = {}  # seq -> when it was sent
        self._sent_order: deque[tuple[float, int]] = deque()
        self._expiry: list[tuple[float, int]] = []
        self._arrival: list[deque[int]] = [deque() for _ in Priority]  # for shedding, oldest first
        self._bytes = 0
        for seq, pri, key, expires, size, topic in self._db.execute(
            "SELECT seq, priority, key, expires, size, topic FROM spool ORDER BY seq"
        ):
            self._remember(seq, Priority(pri), key, expires, size, len(key or "") + len(topic))
        row = self._db.execute("SELECT MAX(seq) FROM spool").fetchone()
        # Sequences are reserved on disk a block at a time: a crash skips the rest of the
        # block (a gap the receiver's floor covers) and never reuses one.
        self._next = max(self._counters.get("next_seq", 1), (row[0] or 0) + 1)
        self._reserved = self._next - 1

    # -- enqueueing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit every ``put`` inside as one transaction (one fsync for a burst of reports)."""
        if self._batching:
            yield
            return
        try:
            with transaction(self._db):
                self._batching = True
                yield
        except BaseException:
            handed_out = self._next
            self._load_state()  # what memory saw of the batch was rolled back
            # but not the sequences it handed out: one may have been taken and sent.
            self._next = max(self._next, handed_out)
            raise
        finally:
            self._batching = False

    def _tx(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext() if self._batching else transaction(self._db)

    def put(
        self,
        topic: str,
        payload: bytes = b"",
        *,
        priority: Priority,
        now: float,
        key: str = "",
        rv: int = 0,
        ttl: float | None = None,
        size: int | None = None,
        meta: dict[str, object] | None = None,
    ) -> int | None:
        """Commit one message; returns its sequence, or None if the quota shed it at once.

        With a ``key``, an older message under the same key that has not been acknowledged is
        replaced (coalesced): only the newest state crosses the link."""
        charged = len(payload) if size is None else size
        if charged < len(payload):
            raise ValueError(f"size {charged} is smaller than the payload ({len(payload)} bytes)")
        seq = self._next
        self._next += 1
        expires = None if ttl is None else now + ttl
        shed = self._make_room(charged, priority)
        if shed is None:
            log.warning("%s: storage quota: refused a %s message", self.source, priority.name)
            with self._tx():
                self._bump(f"shed.{priority.name.lower()}")
                if self._next > self._reserved:
                    self._reserve()
            return None
        old = self._keys.get(key) if key else None
        row = (int(priority), topic, rv, now, expires, charged, orjson.dumps(meta or {}), payload)
        with self._tx():
            for victim in shed:
                if victim != old:
                    self._db.execute("DELETE FROM spool WHERE seq = ?", (victim,))
            if old is not None:
                # The row takes the new message's sequence: one write, not a delete and an insert.
                self._db.execute(
                    "UPDATE spool SET seq = ?, priority = ?, topic = ?, rv = ?, created = ?, "
                    "expires = ?, size = ?, meta = ?, payload = ? WHERE seq = ?",
                    (seq, *row, old),
                )
            else:
                self._db.execute(
                    "INSERT INTO spool (seq, key, priority, topic, rv, created, expires, size, "
                    "meta, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, key or None, *row),
                )
            if self._next > self._reserved:
                self._reserve()
            if old is not None:
                self._note("superseded")
            for victim in shed:
                if victim != old:
                    self._bump(f"shed.{self._rows[victim].priority.name.lower()}")
        if shed:
            log.warning("%s: storage quota: shed %d bulk message(s)", self.source, len(shed))
        if old is not None:
            self._forget(old)
        for victim in shed:
            self._forget(victim)
        self._remember(seq, priority, key or None, expires, charged, len(key) + len(topic))
        return seq

    def _make_room(self, size: int, priority: Priority) -> list[int] | None:
        """Bulk rows (oldest first) to shed so ``size`` more bytes fit the quota; None if the
        new message is bulk and cannot fit. Control, results and status always go in."""
        if self.quota_bytes is None or self._bytes + size <= self.quota_bytes:
            return []
        need = self._bytes + size - self.quota_bytes
        victims: list[int] = []
        for pri in (Priority.BULK, Priority.CHUNK):
            if pri < priority:
                break  # never shed a more important class for a bulk message
            for seq in self._arrival[pri]:
                if need <= 0:
                    break
                if seq in self._rows:
                    victims.append(seq)
                    need -= self._rows[seq].size
        if need > 0 and priority.is_bulk:
            return None
        return victims

    # -- sending -------------------------------------------------------------------------

    def window_reset(self) -> None:
        """A new contact begins: the reserved share counts from here."""
        self._sent_total = 0
        self._sent_bulk = 0

    def take(self, budget: int, now: float) -> list[Envelope]:
        """The next envelopes to send within ``budget`` wire bytes, and at least one if any is
        due: a message larger than the budget goes alone (the transport carries the debt).
        They are in flight until ``acknowledge`` or ``resend_all``."""
        self.expire(now)
        self._time_out(now)
        chosen: list[int] = []
        used = 0
        while True:
            seq = self._pick()
            if seq is None:
                break
            row = self._rows[seq]
            if used + row.wire > budget and chosen:
                # Put it back: it goes first next time.
                heapq.heappush(self._due[row.priority], (row.deadline, seq))
                break
            used += row.wire
            chosen.append(seq)
            self._flight[seq] = now
            if self.resend_after is not None:
                self._sent_order.append((now, seq))
            self._sent_total += row.wire
            if row.priority.is_bulk:
                self._sent_bulk += row.wire
        return self._load(chosen)

    def _time_out(self, now: float) -> None:
        """Unanswered for ``resend_after``: due again (the receipts make a repeat harmless)."""
        if self.resend_after is None:
            return
        order = self._sent_order
        while order and order[0][0] + self.resend_after <= now:
            sent, seq = order.popleft()
            if self._flight.get(seq) == sent:
                del self._flight[seq]
                row = self._rows.get(seq)
                if row is not None:
                    heapq.heappush(self._due[row.priority], (row.deadline, seq))

    def _pick(self) -> int | None:
        bulk_waiting = any(self._peek(p) for p in (Priority.CHUNK, Priority.BULK))
        if bulk_waiting and self._sent_bulk < self.reserved_share * self._sent_total:
            order: Iterable[Priority] = (Priority.CHUNK, Priority.BULK, *Priority)
        else:
            order = Priority
        for pri in order:
            if self._peek(pri):
                return heapq.heappop(self._due[pri])[1]
        return None

    def _peek(self, pri: Priority) -> bool:
        """True if a due message waits in ``pri`` (dropping stale heap entries)."""
        heap = self._due[pri]
        while heap:
            seq = heap[0][1]
            if seq in self._rows and seq not in self._flight:
                return True
            heapq.heappop(heap)
        return False

    def _load(self, seqs: list[int]) -> list[Envelope]:
        if not seqs:
            return []
        floor = self.floor
        out = []
        for seq in seqs:
            row = self._db.execute(
                "SELECT priority, topic, key, rv, created, expires, size, meta, payload "
                "FROM spool WHERE seq = ?",
                (seq,),
            ).fetchone()
            pri, topic, key, rv, created, expires, size, meta, payload = row
            out.append(
                Envelope(
                    self.source,
                    seq,
                    Priority(pri),
                    DATA,
                    topic,
                    key or "",
                    rv,
                    created,
                    expires,
                    floor,
                    bytes(payload),
                    size,
                    orjson.loads(meta),
                )
            )
        return out

    def acknowledge(self, seqs: Iterable[int]) -> int:
        """The peer has these; returns how many were still spooled."""
        done = list(
            dict.fromkeys(s for s in seqs if s in self._rows)
        )  # a seq named twice counts once
        if not done:
            return 0
        with self._tx():
            self._db.executemany("DELETE FROM spool WHERE seq = ?", ((s,) for s in done))
        self._note("acknowledged", len(done))
        for seq in done:
            self._forget(seq)
        return len(done)

    def acknowledge_ranges(self, ranges: Iterable[tuple[int, int]]) -> int:
        """``acknowledge`` every spooled seq within the inclusive ranges."""
        seqs: list[int] = []
        spooled: list[int] | None = None  # in order: rows are only ever added at a new seq
        for lo, hi in ranges:
            if hi - lo < 64:
                seqs.extend(s for s in range(lo, hi + 1) if s in self._rows)
                continue
            if spooled is None:
                spooled = list(self._rows)
            seqs.extend(spooled[bisect.bisect_left(spooled, lo) : bisect.bisect_right(spooled, hi)])
        return self.acknowledge(seqs)

    def resend_all(self) -> None:
        """The link went down (or answers timed out): what was in flight is due again."""
        for seq in self._flight:
            row = self._rows.get(seq)
            if row is not None:
                heapq.heappush(self._due[row.priority], (row.deadline, seq))
        self._flight.clear()
        self._sent_order.clear()

    def expire(self, now: float) -> int:
        """Drop messages past their TTL, counting each by class."""
        dead = []
        while self._expiry and self._expiry[0][0] <= now:
            seq = heapq.heappop(self._expiry)[1]
            if seq in self._rows:
                dead.append(seq)
        if not dead:
            return 0
        with self._tx():
            self._db.executemany("DELETE FROM spool WHERE seq = ?", ((s,) for s in dead))
            for seq in dead:
                self._bump(f"expired.{self._rows[seq].priority.name.lower()}")
        classes = sorted({self._rows[s].priority.name.lower() for s in dead})
        log.warning("%s: %d message(s) expired unsent (%s)", self.source, len(dead), classes)
        for seq in dead:
            self._forget(seq)
        return len(dead)

    # -- bookkeeping ---------------------------------------------------------------------

    @property
    def floor(self) -> int:
        """The lowest sequence still spooled (or the next one): everything below is settled."""
        return min(self._rows, default=self._next)

    def _remember(
        self, seq: int, pri: Priority, key: str | None, expires: float | None, size: int, extra: int
    ) -> None:
        deadline = _INF if expires is None else expires
        self._rows[seq] = _Row(pri, deadline, size, size + 96 + extra, key)
        if key:
            self._keys[key] = seq
        self._bytes += size
        heapq.heappush(self._due[pri], (deadline, seq))
        self._arrival[pri].append(seq)
        if expires is not None:
            heapq.heappush(self._expiry, (deadline, seq))

    def _forget(self, seq: int) -> None:
        row = self._rows.pop(seq, None)
        if row is not None:
            self._bytes -= row.size
            if row.key and self._keys.get(row.key) == seq:
                del self._keys[row.key]
            arrival = self._arrival[row.priority]
            while arrival and arrival[0] not in self._rows:
                arrival.popleft()
        self._flight.pop(seq, None)

    def _reserve(self) -> None:
        self._reserved = self._next + _SEQ_BLOCK
        self._set_counter("next_seq", self._reserved + 1)

    def _note(self, name: str, n: int = 1) -> None:
        """An informational count, kept in memory (it restarts from zero with the process)."""
        self._counters[name] = self._counters.get(name, 0) + n

    def _bump(self, name: str, n: int = 1) -> None:
        self._set_counter(name, self._counters.get(name, 0) + n)

    def _set_counter(self, name: str, value: int) -> None:
        self._counters[name] = value
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?",
            (name, value, value),
        )

    @property
    def in_flight_bytes(self) -> int:
        """Wire bytes sent and not yet acknowledged (a transport's flow-control window)."""
        return sum(self._rows[s].wire for s in self._flight if s in self._rows)

    def pending_by_class(self) -> dict[Priority, int]:
        out = dict.fromkeys(Priority, 0)
        for row in self._rows.values():
            out[row.priority] += 1
        return out

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, seq: int) -> bool:
        return seq in self._rows

    def keys(self) -> list[str]:
        """The keys of the coalesced messages waiting, oldest first."""
        return [k for k, _ in sorted(self._keys.items(), key=lambda kv: kv[1])]

    def payload(self, key: str) -> bytes | None:
        """The payload of the message waiting under ``key``, if any."""
        seq = self._keys.get(key)
        if seq is None:
            return None
        row = self._db.execute("SELECT payload FROM spool WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])

    def holds(self, key: str) -> bool:
        """True while a message under ``key`` waits for its acknowledgement."""
        return key in self._keys

    def stats(self) -> SpoolStats:
        counters = {k: v for k, v in self._counters.items() if k != "next_seq"}
        return SpoolStats(len(self._rows), self._bytes, len(self._flight), counters)

    def close(self) -> None:
        self._db.close()
