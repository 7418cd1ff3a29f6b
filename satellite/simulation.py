"""The constellation simulator: the production sync engine over a virtual link.

Each satellite and its ground peer are two ``SyncEndpoint`` s, the very spool, receipts and
transfers the hubs run, each on its own SQLite files. The link between them exists only in
the passes of the contact plan, shaped by the link model (acquisition, asymmetric rates,
bursty frame loss, aborted passes, stalls). Time is virtual: seven days of one satellite run
in seconds and the same seed gives the same run. Hubs can be killed at random moments,
including in the middle of applying a message, and restarted from their stores.
"""

from __future__ import annotations

import functools
import hashlib
import random
import shutil
import sqlite3
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from ..orchestration.protocol.envelopes import ACK, Envelope, Priority
from ..orchestration.protocol.receipts import RangeSet, ack_ranges
from ..orchestration.protocol.syncing import Handler, SyncEndpoint
from ..orchestration.protocol.transfers import (
    CHUNK_TOPIC,
    MANIFEST_TOPIC,
    Manifest,
    build_manifest,
)
from .clock import EventLoop
from .contacts import DAY, Contact
from .governing import ComputeGovernor, Job
from .link import LinkModel, PassLink
from .power import PowerModel
from .scenario import Scenario

__all__ = ["Crash", "ModelRecord", "PassRecord", "SatelliteRun", "Simulation"]

Side = Literal["space", "ground"]


class Crash(BaseException):
    """A hub killed mid-operation. A BaseException, so that no ``except Exception`` in the
    sync engine can mistake it for an application error and record anything."""


@dataclass
class PassRecord:
    contact: Contact
    usable_from: float
    ends_at: float
    aborted: bool
    stalled: bool
    expected_down: int  # rate x open time x (1 - mean loss) / 8
    expected_up: int
    down: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    up: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    backlog_start: int = 0  # bytes spooled on board when the pass opened
    backlog_left: int = 0  # bytes still spooled on board at the end
    bulk_waiting: bool = False  # bulk was spooled on board when the pass opened
    reached: bool = False  # the run got to this pass (the plan runs a day past the end)

    @property
    def open_seconds(self) -> float:
        return max(0.0, self.ends_at - self.usable_from)

    @property
    def down_bytes(self) -> int:
        return sum(self.down.values())


@dataclass
class ModelRecord:
    name: str
    size: int
    sha256: str
    offered: float
    activated: float | None = None
    passes: int | None = None  # passes with open link from offer to activation


class _Hub:
    """One side's endpoint, reopened from disk after a crash."""

    def __init__(self, run: SatelliteRun, side: Side) -> None:
        self.run = run
        self.side = side
        self.name = run.name if side == "space" else f"ground/{run.name}"
        self.directory = run.directory / side
        self.crash_in_apply = False
        self.restarts = 0
        self.endpoint = self._open()

    def _open(self) -> SyncEndpoint:
        sc = self.run.sim.scenario
        if self.side == "ground":
            handlers = self.run.ground_handlers(self)
        else:
            # On board, what is applied is the ground's blobs: an armed crash strikes there.
            handlers = {
                MANIFEST_TOPIC: self._armed(lambda: self.endpoint.receiver.on_manifest),
                CHUNK_TOPIC: self._armed(lambda: self.endpoint.receiver.on_chunk),
            }
        endpoint = SyncEndpoint(
            self.name,
            self.directory,
            handlers=handlers,
            on_activated=self.run.activated if self.side == "space" else None,
            quota_bytes=sc.quota_bytes if self.side == "space" else None,
            reserved_share=sc.reserved_share,
            synchronous="OFF",  # survives a process kill, which is what the crashes model
        )
        if self.side == "ground":
            self.run.offer_models(endpoint)
        return endpoint

    def _armed(self, target: Callable[[], Handler]) -> Handler:
        def handler(envelope: Envelope, db: sqlite3.Connection) -> None:
            self.armed()
            target()(envelope, db)

        return handler

    def armed(self) -> None:
        """Called inside each application: the armed crash strikes mid-transaction."""
        if self.crash_in_apply:
            self.crash_in_apply = False
            raise Crash(f"{self.name} killed while applying")

    def restart(self) -> None:
        self.endpoint.close()
        self.restarts += 1
        self.endpoint = self._open()


class SatelliteRun:
    """One satellite, its ground peer, its workloads and what they measured."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.sim = sim
        self.name = name
        self.directory = sim.directory / name
        sc = sim.scenario
        self.rng = random.Random(f"{sc.seed}/{name}")
        self.models: list[ModelRecord] = []
        self._model_data: dict[str, tuple[Manifest, bytes]] = {}
        self.status_generated: dict[str, list[tuple[int, float]]] = {}
        self.results_generated: dict[int, float] = {}
        self.passes: list[PassRecord] = []
        self.corrupted = 0
        self.bulk_seqs: list[int] = []  # what the satellite spooled, to account for on the ground
        self.bulk_refused = 0
        self.acked_by_space = RangeSet()  # ground seqs the satellite's ACKs named
        self.chunks_sent = 0
        self.chunks_resent_after_ack = 0
        self.power = PowerModel(sc.power, start=0.0)
        self.governor = ComputeGovernor(self.power, sim.loop)
        self.space = _Hub(self, "space")
        self.ground = _Hub(self, "ground")
        self._queues: dict[str, deque[list[object]]] = {"down": deque(), "up": deque()}
        self._pass: tuple[PassLink, PassRecord] | None = None
        self._rv = 0
        self._frame = 0

    # -- the ground's application -----------------------------------------------------------

    def ground_handlers(self, hub: _Hub) -> dict[str, Handler]:
        def status(env: Envelope, conn: sqlite3.Connection) -> None:
            hub.armed()
            conn.execute(
                "INSERT INTO sim_status VALUES (?, ?, ?, ?)",
                (env.key, env.rv, env.seq, self.sim.loop.now),
            )

        def result(env: Envelope, conn: sqlite3.Connection) -> None:
            hub.armed()
            frame = int(env.meta.get("frame", -1))
            conn.execute(
                "INSERT INTO sim_results VALUES (?, ?, ?)", (frame, env.seq, self.sim.loop.now)
            )

        def bulk(env: Envelope, conn: sqlite3.Connection) -> None:
            hub.armed()
            conn.execute(
                "INSERT INTO sim_bulk VALUES (?, ?, ?)", (env.seq, env.size, self.sim.loop.now)
            )

        return {"status": status, "result": result, "bulk": bulk}

    def _ground_tables(self) -> None:
        self.ground.endpoint.receipts.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS sim_status (key TEXT, rv INTEGER, seq INTEGER, at REAL);
            CREATE TABLE IF NOT EXISTS sim_results (frame INTEGER, seq INTEGER, at REAL);
            CREATE TABLE IF NOT EXISTS sim_bulk (seq INTEGER, size INTEGER, at REAL);
            """
        )

    def offer_models(self, endpoint: SyncEndpoint) -> None:
        """After a ground restart: the models offered so far are still spooled; give the
        sender back where their chunks are read from (for chunks asked for again)."""
        for record in self.models:
            manifest, data = self._model_data[record.name]
            endpoint.sender.attach(manifest, _reader(manifest, data))

    def activated(self, manifest: Manifest) -> None:
        for record in self.models:
            if record.name == manifest.name and record.activated is None:
                record.activated = self.sim.loop.now
                record.passes = sum(
                    1
                    for p in self.passes
                    if p.open_seconds > 0
                    and p.ends_at > record.offered
                    and p.usable_from <= record.activated
                )

    # -- workloads on board -------------------------------------------------------------

    def start(self) -> None:
        sc = self.sim.scenario
        wl = sc.workload
        loop = self.sim.loop
        self._ground_tables()
        end = sc.days * DAY
        if wl.backlog_bytes:
            with self.space.endpoint.spool.batch():
                for _ in range(wl.backlog_bytes // wl.frame_bytes):
                    self._bulk(0.0)
        if wl.status_keys:
            self._every(wl.status_interval, end, self._report_status)
        if wl.frame_interval > 0:
            self._every(wl.frame_interval, end, self._capture)
        for update in wl.models:
            loop.call_at(update.at, functools.partial(self._offer, update.name, update.size_bytes))
        plan = self.sim.plan
        windows = []
        for contact in plan.for_satellite(self.name):
            link = self.sim.link.open(contact)
            record = PassRecord(
                contact,
                link.usable_from,
                link.ends_at,
                link.aborted,
                link.stall is not None,
                link.usable_bytes("down"),
                link.usable_bytes("up"),
            )
            self.passes.append(record)
            if link.usable_from < link.ends_at:
                windows.append((link.usable_from, link.ends_at))
                loop.call_at(link.usable_from, functools.partial(self._open_pass, link, record))
        # The radio's draw is known ahead from the plan, so compute admission foresees it.
        self.power.schedule_comms(windows)

    def _every(self, interval: float, end: float, action: object) -> None:
        loop = self.sim.loop
        assert callable(action)

        def tick() -> None:
            action()
            if loop.now + interval < end:
                loop.call_later(interval, tick)

        loop.call_at(interval * self.rng.random(), tick)

    def _report_status(self) -> None:
        wl = self.sim.scenario.workload
        now = self.sim.loop.now
        self._rv += 1
        with self.space.endpoint.spool.batch():
            for k in range(wl.status_keys):
                key = f"status/{self.name}/{k}"
                self.space.endpoint.send(
                    "status",
                    b"",
                    priority=Priority.STATUS,
                    now=now,
                    key=key,
                    rv=self._rv,
                    size=wl.status_bytes,
                )
                self.status_generated.setdefault(key, []).append((self._rv, now))

    def _capture(self) -> None:
        wl = self.sim.scenario.workload
        self._frame += 1
        frame = self._frame
        hard = self.rng.random() < wl.hard_fraction
        self.governor.submit(
            f"infer-{frame}",
            wl.device,
            wl.inference_s,
            lambda job: self._inferred(job, frame, hard),
        )

    def _inferred(self, job: Job, frame: int, hard: bool) -> None:
        wl = self.sim.scenario.workload
        now = self.sim.loop.now
        self.space.endpoint.send(
            "result",
            orjson.dumps({"frame": frame}),
            priority=Priority.RESULT,
            now=now,
            size=wl.result_bytes,
            ttl=wl.result_ttl,
            meta={"frame": frame},
        )
        self.results_generated[frame] = now
        if hard:
            self._bulk(now)

    def _bulk(self, now: float) -> None:
        wl = self.sim.scenario.workload
        seq = self.space.endpoint.send(
            "bulk", priority=Priority.BULK, now=now, size=wl.frame_bytes, ttl=wl.bulk_ttl
        )
        if seq is None:
            self.bulk_refused += 1  # shed by the quota at once (and counted by the spool)
        else:
            self.bulk_seqs.append(seq)

    def _offer(self, name: str, size: int) -> None:
        data = random.Random(f"{self.sim.scenario.seed}/{self.name}/{name}").randbytes(size)
        manifest = build_manifest(name, "v1", data)
        self._model_data[name] = (manifest, data)
        # The digest the board must end up with, from the data, not from the code under test.
        digest = hashlib.sha256(data).hexdigest()
        self.models.append(ModelRecord(name, size, digest, self.sim.loop.now))
        self.ground.endpoint.offer(manifest, _reader(manifest, data), now=self.sim.loop.now)

    # -- passes ------------------------------------------------------------------------

    def _open_pass(self, link: PassLink, record: PassRecord) -> None:
        self._pass = (link, record)
        record.reached = True
        record.bulk_waiting = any(
            n for p, n in self.space.endpoint.spool.pending_by_class().items() if p.is_bulk
        )
        record.backlog_start = self.space.endpoint.spool.stats().pending_bytes
        self.space.endpoint.link_up()
        self.ground.endpoint.link_up()
        self._tick(link.usable_from)

    def _tick(self, t0: float) -> None:
        if self._pass is None:
            return
        link, record = self._pass
        t1 = min(t0 + self.sim.scenario.tick, link.ends_at)
        self._move("down", self.space, self.ground, link, record, t0, t1)
        self._move("up", self.ground, self.space, link, record, t0, t1)
        if t1 < link.ends_at:
            self.sim.loop.call_at(t1, lambda: self._tick(t1))
        else:
            self.sim.loop.call_at(t1, self._close_pass)

    def _close_pass(self) -> None:
        if self._pass is None:
            return
        _, record = self._pass
        self._pass = None
        self._drop_link()
        record.backlog_left = self.space.endpoint.spool.stats().pending_bytes

    def _drop_link(self) -> None:
        for queue in self._queues.values():
            queue.clear()  # what was on the air is lost
        self.space.endpoint.link_down()
        self.ground.endpoint.link_down()

    def _move(
        self,
        direction: str,
        sender: _Hub,
        receiver: _Hub,
        link: PassLink,
        record: PassRecord,
        t0: float,
        t1: float,
    ) -> None:
        credit = link.capacity("down" if direction == "down" else "up", t0, t1)
        queue = self._queues[direction]
        tally = record.down if direction == "down" else record.up
        try:
            # One commit per tick on the receiving side, as a hub commits per burst.
            with receiver.endpoint.receipts.batch():
                while credit > 0:
                    if not queue:
                        envelopes = sender.endpoint.outgoing(credit, t0)
                        if not envelopes:
                            return
                        queue.extend([e, e.wire_size] for e in envelopes)
                    head = queue[0]
                    remaining = head[1]
                    assert isinstance(remaining, int)
                    if remaining > credit:
                        head[1] = remaining - credit
                        return
                    credit -= remaining
                    queue.popleft()
                    envelope = head[0]
                    assert isinstance(envelope, Envelope)
                    tally[envelope.priority] += envelope.wire_size
                    self._audit(envelope, receiver)
                    self._deliver(envelope, receiver, t1)
        except Crash:
            self.crash(receiver)

    def _audit(self, envelope: Envelope, receiver: _Hub) -> None:
        """Watch the ground's sends: a chunk whose ACK the ground already received must
        never go up again."""
        if receiver is self.ground and envelope.kind == ACK and envelope.topic == receiver.name:
            for lo, hi in ack_ranges(envelope):
                for seq in range(lo, hi + 1):
                    self.acked_by_space.add(seq)
        elif receiver is self.space and envelope.topic == CHUNK_TOPIC:
            self.chunks_sent += 1
            if envelope.seq in self.acked_by_space:
                self.chunks_resent_after_ack += 1

    def _deliver(self, envelope: Envelope, receiver: _Hub, now: float) -> None:
        sc = self.sim.scenario
        if envelope.topic == CHUNK_TOPIC and self.rng.random() < sc.corrupt_probability:
            damaged = bytearray(envelope.payload)
            damaged[self.rng.randrange(len(damaged))] ^= 0xFF
            envelope.payload = bytes(damaged)  # re-framed below with a valid CRC
            self.corrupted += 1
        receiver.endpoint.incoming_frame(envelope.encode(), now)

    # -- faults ------------------------------------------------------------------------

    def crash(self, hub: _Hub) -> None:
        """Kill ``hub`` and restart it from its store; a link in use drops and comes back."""
        in_pass = self._pass is not None
        self._drop_link()
        hub.restart()
        if hub.side == "ground":
            self._ground_tables()
        if in_pass:
            self.space.endpoint.link_up()
            self.ground.endpoint.link_up()


def _reader(manifest: Manifest, data: bytes) -> Callable[[int], bytes]:
    def read(index: int) -> bytes:
        start = index * manifest.chunk_size
        return data[start : start + manifest.chunk_size]

    return read


class Simulation:
    """Run a scenario: ``Simulation(scenario).run()`` returns the per-satellite runs."""

    def __init__(self, scenario: Scenario, *, directory: Path | str | None = None) -> None:
        self.scenario = scenario
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="orbiter-sim-"))
        if not self._own_dir and self.directory.exists() and any(self.directory.iterdir()):
            # The hubs would reopen an earlier run's stores, and its rows would be counted.
            raise ValueError(f"{self.directory} is not empty: give a new directory per run")
        self.plan = scenario.contact_plan()
        self.loop = EventLoop()
        self.link = LinkModel(scenario.link, seed=scenario.seed)
        self.runs = [SatelliteRun(self, name) for name in scenario.satellites]
        self.crashes: list[tuple[float, str]] = []

    def run(self) -> list[SatelliteRun]:
        sc = self.scenario
        for run in self.runs:
            run.start()
        self._plan_crashes()
        plan = self.plan
        # Drain: past the workloads' end, up to the end of the first pass that follows.
        end = sc.days * DAY
        until = end
        for run in self.runs:
            drain = [c.end for c in plan.for_satellite(run.name) if c.start >= end]
            until = max(until, min(drain, default=end))
        self.loop.run_until(until + 1)
        for run in self.runs:
            run.power.advance(self.loop.now)
        return self.runs

    def _plan_crashes(self) -> None:
        rng = random.Random(f"{self.scenario.seed}/crashes")
        for _ in range(self.scenario.crashes):
            run = rng.choice(self.runs)
            at = self._crash_time(run, rng)
            side: Side = rng.choice(("space", "ground"))
            in_apply = rng.random() < 0.5
            self.loop.call_at(at, functools.partial(self._strike, run, side, in_apply))

    def _crash_time(self, run: SatelliteRun, rng: random.Random) -> float:
        """Mostly during passes, where a crash can cut a message or an ACK."""
        open_passes = [
            p for p in run.passes if p.open_seconds > 0 and p.usable_from < self.scenario.days * DAY
        ]
        if open_passes and rng.random() < 0.8:
            p = rng.choice(open_passes)
            return p.usable_from + rng.random() * p.open_seconds
        return rng.random() * self.scenario.days * DAY

    def _strike(self, run: SatelliteRun, side: Side, in_apply: bool) -> None:
        hub = run.space if side == "space" else run.ground
        self.crashes.append((self.loop.now, hub.name))
        if in_apply and not hub.crash_in_apply:
            hub.crash_in_apply = True  # the next application dies half-way
        else:  # (one already waits there: this one strikes now, so none is lost)
            run.crash(hub)

    def close(self) -> None:
        for run in self.runs:
            run.space.endpoint.close()
            run.ground.endpoint.close()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
