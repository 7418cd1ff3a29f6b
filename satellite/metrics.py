"""What a simulation run measured, checked against satellite.md §5.4.

Every figure is computed from what the ground actually applied (its receipts database, in
application order) and what the satellite actually generated, not from the sync engine's
own counters, so a bug in the engine shows up here instead of being reported as success.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import statistics
from dataclasses import dataclass, field
from typing import Any

from ..orchestration.protocol.envelopes import Priority
from .simulation import PassRecord, SatelliteRun

__all__ = ["SatelliteMetrics", "measure", "summary"]

MINUTE = 60.0


@dataclass
class SatelliteMetrics:
    name: str
    status_versions: int = 0
    status_applied: int = 0
    duplicate_applies: int = 0
    regressions: int = 0
    keys_not_final: list[str] = field(default_factory=list)
    staleness: list[float] = field(default_factory=list)
    staleness_violations: list[dict[str, Any]] = field(default_factory=list)
    status_passes_to_deliver: dict[int, int] = field(default_factory=dict)
    results_generated: int = 0
    results_delivered: int = 0
    results_duplicated: int = 0
    results_late: list[dict[str, Any]] = field(default_factory=list)
    bulk_share_violations: list[dict[str, Any]] = field(default_factory=list)
    capacity_ratios: list[float] = field(default_factory=list)
    bytes_down: dict[str, int] = field(default_factory=dict)
    bytes_up: dict[str, int] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    soc_min: float = 1.0
    soc_floor: float = 0.0
    payload_share: float = 0.0
    energy_per_orbit: list[dict[str, float]] = field(default_factory=list)
    compute_deferrals: int = 0
    compute_pending: int = 0
    passes: int = 0
    aborted_passes: int = 0
    corrupted_chunks: int = 0
    chunks_sent: int = 0
    chunks_resent_after_ack: int = 0
    restarts: int = 0
    bulk_generated: int = 0
    bulk_applied: int = 0
    bulk_duplicated: int = 0
    bulk_lost: int = 0  # neither on the ground, nor still spooled, nor shed or expired (counted)
    status_delays: list[tuple[float, float]] = field(default_factory=list)  # (made, delay)
    spool: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """The §5.4 goals this satellite missed, by name (empty: all met)."""
        checks = {
            "duplicate status applies": self.duplicate_applies,
            "status regressions": self.regressions,
            "keys not final": self.keys_not_final,
            "staleness bound": self.staleness_violations,
            "duplicate results": self.results_duplicated,
            "results late": self.results_late,
            "bulk share": self.bulk_share_violations,
            "duplicate bulk": self.bulk_duplicated,
            "bulk lost": self.bulk_lost,
            "SoC below floor": self.soc_min < self.soc_floor - 1e-9,
            "chunks resent after ACK": self.chunks_resent_after_ack,
            "model not verified": any(
                not m["verified"] for m in self.models if m["activated"] is not None
            ),
            "model late": any(m["late"] for m in self.models),
        }
        return [name for name, bad in checks.items() if bad]

    @property
    def ok(self) -> bool:
        return not self.failures()


def _open_passes(run: SatelliteRun) -> list[PassRecord]:
    return sorted((p for p in run.passes if p.reached), key=lambda p: p.usable_from)


def _first_pass(
    passes: list[PassRecord], starts: list[float], t: float, room: float
) -> PassRecord | None:
    """The first pass that is still open ``room`` seconds after max(t, its opening)."""
    i = max(0, bisect.bisect_right(starts, t) - 1)
    for p in passes[i:]:
        if p.ends_at - max(t, p.usable_from) >= room:
            return p
    return None


def _passes_allowed(passes: list[PassRecord], offered: float, size: int) -> int | None:
    """satellite.md §5.4 goal 3 over the passes that came: the passes until 90 % of their
    expected uplink adds up to ``size``, plus one for an aborted pass; None if the run ended
    before."""
    carried = 0.0
    after = [p for p in passes if p.ends_at > offered]
    for n, p in enumerate(after, 1):
        carried += 0.9 * p.expected_up
        if carried >= size:
            return n + 1 if n < len(after) else None
    return None


def measure(run: SatelliteRun, *, check_staleness: bool = True) -> SatelliteMetrics:
    sc = run.sim.scenario
    m = SatelliteMetrics(run.name)
    db = run.ground.endpoint.receipts.db
    passes = _open_passes(run)
    starts = [p.usable_from for p in passes]

    # Status: exactly once, in order, final, fresh.
    applied: dict[str, list[tuple[int, float]]] = {}
    seqs: dict[int, int] = {}
    for key, rv, seq, at in db.execute("SELECT key, rv, seq, at FROM sim_status ORDER BY rowid"):
        applied.setdefault(key, []).append((rv, at))
        seqs[seq] = seqs.get(seq, 0) + 1
    m.status_applied = sum(len(v) for v in applied.values())
    m.duplicate_applies = sum(n - 1 for n in seqs.values() if n > 1)
    for key, generated in run.status_generated.items():
        m.status_versions += len(generated)
        got = applied.get(key, [])
        m.regressions += sum(1 for a, b in itertools.pairwise(got) if b[0] <= a[0])
        if not got or got[-1][0] != generated[-1][0]:
            m.keys_not_final.append(key)
        # Each version is delivered when the ground first holds it or a newer one.
        running_max: list[tuple[int, float]] = []
        for rv, at in got:
            if not running_max or rv > running_max[-1][0]:
                running_max.append((rv, at))
        rvs = [r for r, _ in running_max]
        for rv, made in generated:
            j = bisect.bisect_left(rvs, rv)
            if j == len(rvs):
                continue  # never delivered: shows as keys_not_final unless superseded later
            delivered = running_max[j][1]
            m.staleness.append(delivered - made)
            m.status_delays.append((made, delivered - made))
            npasses = sum(1 for s in starts if made <= s <= delivered) or 1
            m.status_passes_to_deliver[npasses] = m.status_passes_to_deliver.get(npasses, 0) + 1
            if check_staleness:
                p = _first_pass(passes, starts, made, MINUTE)
                if p is not None and delivered > max(made, p.usable_from) + MINUTE:
                    m.staleness_violations.append(
                        {
                            "key": key,
                            "rv": rv,
                            "made": made,
                            "delivered": delivered,
                            "bound": max(made, p.usable_from) + MINUTE,
                        }
                    )

    # Results: every one made before the last minute of a pass is down in that pass.
    got_results: dict[int, float] = {}
    for frame, _seq, at in db.execute("SELECT frame, seq, at FROM sim_results ORDER BY rowid"):
        if frame in got_results:
            m.results_duplicated += 1
        else:
            got_results[frame] = at
    m.results_generated = len(run.results_generated)
    m.results_delivered = len(got_results)
    end = sc.days * 86_400.0
    for frame, made in run.results_generated.items():
        p = _first_pass(passes, starts, made, MINUTE)
        if p is None or p.usable_from > end + 86_400.0:
            continue
        at = got_results.get(frame)
        if at is None or at > p.ends_at:
            m.results_late.append({"frame": frame, "made": made, "delivered": at, "by": p.ends_at})

    # Link use per pass: the reserved share for bulk, and capacity when the backlog exceeds it.
    for p in run.passes:
        for pri, n in p.down.items():
            m.bytes_down[pri.name.lower()] = m.bytes_down.get(pri.name.lower(), 0) + n
        for pri, n in p.up.items():
            m.bytes_up[pri.name.lower()] = m.bytes_up.get(pri.name.lower(), 0) + n
        if not p.reached:
            continue
        m.passes += 1
        m.aborted_passes += p.aborted
        if p.down_bytes == 0:
            continue
        bulk = p.down[Priority.CHUNK] + p.down[Priority.BULK]
        contended = p.backlog_start > p.expected_down
        if p.bulk_waiting and contended and bulk < 0.95 * sc.reserved_share * p.down_bytes:
            m.bulk_share_violations.append(
                {"pass": p.contact.start, "bulk": bulk, "total": p.down_bytes}
            )
        if not p.aborted and not p.stalled and contended:
            # rate x (T - T_acq) x (1 - FER), the link model's expectation for the pass
            m.capacity_ratios.append(p.down_bytes / p.expected_down)

    for record in run.models:
        allowed = _passes_allowed(passes, record.offered, record.size)
        took = record.passes
        late = (took is not None and allowed is not None and took > allowed) or (
            record.activated is None and allowed is not None
        )
        current = run.space.endpoint.receiver.active(record.name)[0]
        verified = False
        if current is not None:
            blob = run.space.endpoint.receiver.blob_path(record.name, current)
            verified = hashlib.sha256(blob.read_bytes()).hexdigest() == record.sha256
        m.models.append(
            {
                "name": record.name,
                "megabytes": record.size / 1e6,
                "offered": record.offered,
                "activated": record.activated,
                "passes": record.passes,
                "allowed": allowed,
                "late": late,
                "verified": verified,
            }
        )

    # Bulk: every frame spooled on board is on the ground once, still spooled, or dropped
    # with a counter (quota, TTL); anything else was lost.
    applied_bulk: dict[int, int] = {}
    for (seq,) in db.execute("SELECT seq FROM sim_bulk"):
        applied_bulk[seq] = applied_bulk.get(seq, 0) + 1
    spool = run.space.endpoint.spool
    counters = spool.stats().counters
    dropped = counters.get("shed.bulk", 0) + counters.get("expired.bulk", 0) - run.bulk_refused
    missing = sum(1 for s in run.bulk_seqs if s not in applied_bulk and s not in spool)
    m.bulk_generated = len(run.bulk_seqs) + run.bulk_refused
    m.bulk_applied = len(applied_bulk)
    m.bulk_duplicated = sum(n - 1 for n in applied_bulk.values())
    m.bulk_lost = max(0, missing - dropped)

    orbits = run.power.orbits()
    m.soc_floor = sc.power.soc_floor
    m.soc_min = min((o.soc_min for o in orbits), default=run.power.soc(run.power.now))
    consumed = sum(o.consumed_wh for o in orbits)
    m.payload_share = sum(o.payload_wh for o in orbits) / consumed if consumed else 0.0
    m.energy_per_orbit = [
        {
            "orbit": o.index,
            "consumedWh": round(o.consumed_wh, 3),
            "harvestedWh": round(o.harvested_wh, 3),
            "payloadWh": round(o.payload_wh, 3),
            "socMin": round(o.soc_min, 4),
        }
        for o in orbits
    ]
    m.compute_deferrals = run.governor.deferrals
    m.compute_pending = run.governor.pending
    m.corrupted_chunks = run.corrupted
    m.chunks_sent = run.chunks_sent
    m.chunks_resent_after_ack = run.chunks_resent_after_ack
    m.restarts = run.space.restarts + run.ground.restarts
    m.spool = run.space.endpoint.spool.stats().counters
    m.receipts = dict(run.ground.endpoint.receipts.counters)
    return m


def summary(metrics: list[SatelliteMetrics]) -> dict[str, Any]:
    """JSON-able totals over the satellites."""
    staleness = [s for m in metrics for s in m.staleness]
    ratios = [r for m in metrics for r in m.capacity_ratios]
    ptd: dict[int, int] = {}
    for m in metrics:
        for k, v in m.status_passes_to_deliver.items():
            ptd[k] = ptd.get(k, 0) + v
    down: dict[str, int] = {}
    for m in metrics:
        for cls, n in m.bytes_down.items():
            down[cls] = down.get(cls, 0) + n
    return {
        "ok": all(m.ok for m in metrics),
        "satellites": len(metrics),
        "statusVersions": sum(m.status_versions for m in metrics),
        "statusApplied": sum(m.status_applied for m in metrics),
        "duplicateApplies": sum(m.duplicate_applies for m in metrics),
        "regressions": sum(m.regressions for m in metrics),
        "keysNotFinal": sum(len(m.keys_not_final) for m in metrics),
        "stalenessSeconds": {
            "p50": statistics.median(staleness) if staleness else None,
            "max": max(staleness, default=None),
            "violations": sum(len(m.staleness_violations) for m in metrics),
        },
        "passesToDeliver": dict(sorted(ptd.items())),
        "results": {
            "generated": sum(m.results_generated for m in metrics),
            "delivered": sum(m.results_delivered for m in metrics),
            "late": sum(len(m.results_late) for m in metrics),
        },
        "bytesDown": down,
        "capacityRatio": {"min": min(ratios, default=None), "passes": len(ratios)},
        "bulkShareViolations": sum(len(m.bulk_share_violations) for m in metrics),
        "models": [dict(mm, satellite=m.name) for m in metrics for mm in m.models],
        "energy": {
            "socMin": min(m.soc_min for m in metrics),
            "socFloor": metrics[0].soc_floor if metrics else None,
            "payloadShare": statistics.mean(m.payload_share for m in metrics) if metrics else 0,
            "computeDeferrals": sum(m.compute_deferrals for m in metrics),
        },
        "chunks": {
            "sent": sum(m.chunks_sent for m in metrics),
            "resentAfterAck": sum(m.chunks_resent_after_ack for m in metrics),
            "corrupted": sum(m.corrupted_chunks for m in metrics),
        },
        "passes": sum(m.passes for m in metrics),
        "abortedPasses": sum(m.aborted_passes for m in metrics),
        "restarts": sum(m.restarts for m in metrics),
    }
