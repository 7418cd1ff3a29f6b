"""Where each job's inference runs: on board, split across the link, on the ground, or not at all.

In orbit the scarce things are the daily downlink, the node's memory, the energy left after the
bus, the per-frame deadline and the uplink that carries model weights (satellite.md §4.2). Each
job picks one option (raw downlink, a split at a cut, an on-board exit with or without hard-
example mining, or skip) and the plan maximises Σ weight·frames·accuracy under those budgets.
The instances are small (a handful of jobs, tens of options each), so an exact branch-and-bound
is cheap and a brute-force twin checks it. Ties go to less energy, then less downlink, then the
earlier option, so the same inputs always give the same plan.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from orbiter.satellite.contacts import DAY
from orbiter.satellite.profiles import Job, LinkBudget, NodeProfile

__all__ = ["Option", "Placement", "brute_force", "explain", "options", "plan_placement"]


@dataclass(frozen=True, slots=True)
class Option:
    """One way to serve a job, with what it costs per day. ``job`` is the job's name."""

    job: str
    kind: str
    cut: int | None
    exit: str | None
    threshold: float | None
    accuracy: float
    onboard_s_per_frame: float
    energy_wh_per_day: float
    downlink_bytes_per_day: float
    memory_bytes: int
    upload_bytes: int

    @property
    def label(self) -> str:
        if self.kind == "split":
            return f"split@{self.cut}"
        if self.kind == "onboard":
            hem = "no offload" if self.threshold is None else f"HEM<{self.threshold:g}"
            return f"onboard({self.exit}, {hem})"
        return self.kind


@dataclass(frozen=True)
class Placement:
    """The chosen option per job name, the plan's totals per day and, per job, why."""

    choices: dict[str, Option]
    value: float
    energy_wh_per_day: float
    downlink_bytes_per_day: float
    memory_bytes: int
    reasons: dict[str, str]
    upload_bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Limits:
    memory: float
    energy: float
    downlink: float
    upload: float
    busy: float  # seconds of compute a day: one node cannot run more than a day's worth


def options(job: Job, node: NodeProfile) -> list[Option]:
    """Every option for ``job`` on ``node``, feasible or not, in a fixed order: raw, splits by
    cut index, on-board exits (no offload first, then thresholds ascending), skip."""
    m = job.model
    n = job.frames_per_day

    def onboard_cost(cut_index: int) -> tuple[float, float, int, int]:
        cut = m.cut(cut_index)
        s = cut.flops / node.flops_per_s
        return s, n * s * node.compute_power_w / 3600, cut.memory_bytes, m.upload_bytes(cut_index)

    out = [Option(job.name, "raw", None, None, None, m.ground_accuracy, 0.0, 0.0,
                  n * job.frame_bytes, 0, 0)]  # fmt: skip
    for cut in sorted(m.cuts, key=lambda c: c.index):
        s, wh, mem, up = onboard_cost(cut.index)
        out.append(Option(job.name, "split", cut.index, None, None, m.ground_accuracy, s, wh,
                          n * cut.activation_bytes, mem, up))  # fmt: skip
    for ex in m.exits:
        s, wh, mem, up = onboard_cost(ex.cut_index)
        out.append(Option(job.name, "onboard", ex.cut_index, ex.name, None, ex.accuracy, s, wh,
                          n * job.result_bytes, mem, up))  # fmt: skip
        for h in sorted(ex.thresholds, key=lambda h: h.threshold):
            acc = (1 - h.hard_fraction) * h.easy_accuracy + h.hard_fraction * m.ground_accuracy
            down = n * (job.result_bytes + h.hard_fraction * job.frame_bytes)
            out.append(Option(job.name, "onboard", ex.cut_index, ex.name, h.threshold, acc, s, wh,
                              down, mem, up))  # fmt: skip
    out.append(Option(job.name, "skip", None, None, None, 0.0, 0.0, 0.0, 0.0, 0, 0))
    return out


def _validate(jobs: Sequence[Job], upload_days: float) -> None:
    if upload_days <= 0:
        raise ValueError(f"upload_days must be > 0, got {upload_days}")
    names = [j.name for j in jobs]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise ValueError(f"jobs: name must be unique, repeated: {dup}")


def _limits(node: NodeProfile, budget: LinkBudget, upload_days: float) -> _Limits:
    return _Limits(
        memory=node.memory_bytes,
        energy=node.energy_budget_wh_per_day,
        downlink=budget.downlink_bytes_per_day,
        upload=budget.uplink_bytes_per_day * upload_days,
        busy=DAY,
    )


def _busy(job: Job, o: Option) -> float:
    return job.frames_per_day * o.onboard_s_per_frame


def _value(job: Job, o: Option) -> float:
    return job.weight * job.frames_per_day * o.accuracy


def _alone_fits(job: Job, o: Option, lim: _Limits) -> bool:
    return (
        o.onboard_s_per_frame <= job.deadline_s
        and o.memory_bytes <= lim.memory
        and o.energy_wh_per_day <= lim.energy
        and o.downlink_bytes_per_day <= lim.downlink
        and o.upload_bytes <= lim.upload
        and _busy(job, o) <= lim.busy
    )


# Sums run in job order in both solvers so that equal plans give bit-identical totals.
def _totals(jobs: Sequence[Job], combo: Sequence[Option]) -> tuple[float, ...]:
    value = energy = down = mem = up = busy = 0.0
    for j, o in zip(jobs, combo, strict=True):
        value += _value(j, o)
        energy += o.energy_wh_per_day
        down += o.downlink_bytes_per_day
        mem += o.memory_bytes
        up += o.upload_bytes
        busy += _busy(j, o)
    return value, energy, down, mem, up, busy


def _fits(t: tuple[float, ...], lim: _Limits) -> bool:
    _, energy, down, mem, up, busy = t
    return (
        mem <= lim.memory
        and energy <= lim.energy
        and down <= lim.downlink
        and up <= lim.upload
        and busy <= lim.busy
    )


def brute_force(
    jobs: Sequence[Job], node: NodeProfile, budget: LinkBudget, *, upload_days: float = 1.0
) -> Placement:
    """The reference: every combination, same objective and tie-breaks as ``plan_placement``."""
    _validate(jobs, upload_days)
    lim = _limits(node, budget, upload_days)
    # options that break a budget on their own cannot be in any feasible plan
    per_job = [
        [(i, o) for i, o in enumerate(options(j, node)) if _alone_fits(j, o, lim)] for j in jobs
    ]
    best: tuple[tuple[float, float, float, tuple[int, ...]], tuple[Option, ...]] | None = None
    for pick in itertools.product(*per_job):
        idx = tuple(i for i, _ in pick)
        combo = tuple(o for _, o in pick)
        t = _totals(jobs, combo)
        if not _fits(t, lim):
            continue
        key = (-t[0], t[1], t[2], idx)
        if best is None or key < best[0]:
            best = (key, combo)
    assert best is not None  # all-skip always fits
    return _build(jobs, best[1], lim, node, budget)


_Row = tuple[float, float, float, float, float, float, int]


def _candidates(jobs: Sequence[Job], node: NodeProfile, lim: _Limits) -> list[list[_Row]]:
    """Per job, its options that fit alone as (value, energy, downlink, memory, upload, busy,
    index), best value first (then the tie-break order)."""
    out = []
    for j in jobs:
        rows = [
            (_value(j, o), o.energy_wh_per_day, o.downlink_bytes_per_day, float(o.memory_bytes),
             float(o.upload_bytes), _busy(j, o), i)
            for i, o in enumerate(options(j, node))
            if _alone_fits(j, o, lim)
        ]  # fmt: skip
        rows.sort(key=lambda r: (-r[0], r[1], r[2], r[6]))
        out.append(rows)
    return out


def _hull(points: list[tuple[float, float]]) -> tuple[float, list[tuple[float, float, float]]]:
    """One job's options as (cost, value) points: the best zero-extra-cost value and the steps
    (value per unit cost, cost, value) of the upper concave hull above it."""
    pts = sorted(points, key=lambda p: (p[0], -p[1]))
    hull = [pts[0]]
    for c, v in pts[1:]:
        if v <= hull[-1][1]:
            continue  # costs more and is worth no more
        while len(hull) >= 2:
            (c1, v1), (c2, v2) = hull[-2], hull[-1]
            if (v2 - v1) * (c - c1) > (v - v1) * (c2 - c1):
                break
            hull.pop()  # under the chord: never the LP's choice
        hull.append((c, v))
    steps = [
        ((v2 - v1) / (c2 - c1), c2 - c1, v2 - v1) for (c1, v1), (c2, v2) in itertools.pairwise(hull)
    ]
    return hull[0][1], steps


class _LpBound:
    """The LP relaxation of the multiple-choice knapsack on one budget (energy, downlink, ...):
    fill what is left with the hull steps of jobs k.. by value per unit, the last one in part.
    Any plan obeys each budget, so each such bound caps its value; the search takes the least."""

    def __init__(self, cands: Sequence[Sequence[_Row]], column: int) -> None:
        n = len(cands)
        self.base = [0.0] * (n + 1)
        self.steps: list[list[tuple[float, float, float]]] = [[] for _ in range(n + 1)]
        for k in range(n - 1, -1, -1):
            base, steps = _hull([(row[column], row[0]) for row in cands[k]])
            self.base[k] = self.base[k + 1] + base
            self.steps[k] = sorted(self.steps[k + 1] + steps, reverse=True)

    def __call__(self, k: int, room: float) -> float:
        total = self.base[k]
        for _, dc, dv in self.steps[k]:
            if dc <= room:
                total += dv
                room -= dc
            else:
                return total + dv * room / dc
        return total


def plan_placement(
    jobs: Sequence[Job], node: NodeProfile, budget: LinkBudget, *, upload_days: float = 1.0
) -> Placement:
    """The exact optimum by branch-and-bound over jobs: options tried best value first, a branch
    dropped when its partial sums break a budget or when a relaxation of the rest (each job's
    best option that still fits alone; the LP bound of each budget) cannot reach the incumbent."""
    _validate(jobs, upload_days)
    lim = _limits(node, budget, upload_days)
    n = len(jobs)
    cands = _candidates(jobs, node, lim)
    rest = [0.0] * (n + 1)  # upper bound on the value jobs k.. can still add
    for k in range(n - 1, -1, -1):
        rest[k] = rest[k + 1] + cands[k][0][0]

    caps = (lim.energy, lim.downlink, lim.memory, lim.upload, lim.busy)
    lps = [_LpBound(cands, column) for column in range(1, 6)]
    best_key: list[tuple[float, float, float, tuple[int, ...]] | None] = [None]
    chosen = [0] * n

    def slack(best_value: float) -> float:
        # the bound sums in another order than the totals; never prune a possible tie
        return 1e-9 * max(1.0, abs(best_value))

    def reach(k: int, e: float, d: float, m: float, u: float, b: float) -> float:
        """Upper bound on what jobs k.. add: each takes its best option that fits what is left
        on its own (the jobs still compete with each other, so this is a relaxation)."""
        total = 0.0
        for rows in cands[k:]:
            for val, ce, cd, cm, cu, cb, _ in rows:
                if (
                    e + ce <= lim.energy
                    and d + cd <= lim.downlink
                    and m + cm <= lim.memory
                    and u + cu <= lim.upload
                    and b + cb <= lim.busy
                ):
                    total += val
                    break
        return total

    def search(k: int, v: float, e: float, d: float, m: float, u: float, b: float) -> None:
        bk = best_key[0]
        if k == n:
            key = (-v, e, d, tuple(chosen))
            if bk is None or key < bk:
                best_key[0] = key
            return
        if bk is not None:
            floor = -bk[0] - slack(bk[0])
            used = (e, d, m, u, b)
            if any(v + lp(k, cap - x) < floor for lp, cap, x in zip(lps, caps, used, strict=True)):
                return
            if v + reach(k, e, d, m, u, b) < floor:
                return
        for val, ce, cd, cm, cu, cb, i in cands[k]:
            bk = best_key[0]
            if bk is not None and v + val + rest[k + 1] < -bk[0] - slack(bk[0]):
                break  # later options are worth even less
            ne, nd, nm, nu, nb = e + ce, d + cd, m + cm, u + cu, b + cb
            if ne > lim.energy or nd > lim.downlink or nm > lim.memory or nu > lim.upload:
                continue
            if nb > lim.busy:
                continue
            chosen[k] = i
            search(k + 1, v + val, ne, nd, nm, nu, nb)

    search(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    key = best_key[0]
    assert key is not None  # all-skip always fits
    per_job = [options(j, node) for j in jobs]
    return _build(jobs, tuple(per_job[k][i] for k, i in enumerate(key[3])), lim, node, budget)


def _size(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def _why_not(
    job: Job, o: Option, lim: _Limits, node: NodeProfile, budget: LinkBudget
) -> tuple[str, str]:
    """The first budget ``o`` breaks on its own, as (budget, words); ('', '') if it fits."""
    what = {"raw": "raw frames", "split": f"{o.label} activations"}.get(o.kind, "")
    if o.kind == "onboard":
        what = f"{o.label} results" + ("" if o.threshold is None else " and hard examples")
    busy = _busy(job, o)
    checks = (
        (
            "deadline",
            o.onboard_s_per_frame > job.deadline_s,
            f"{o.label} needs {o.onboard_s_per_frame:.3g} s per frame on board, "
            f"the deadline is {job.deadline_s:g} s",
        ),
        (
            "memory",
            o.memory_bytes > lim.memory,
            f"{o.label} needs {_size(o.memory_bytes)} of memory, {node.name} has "
            f"{_size(lim.memory)}",
        ),
        (
            "energy",
            o.energy_wh_per_day > lim.energy,
            f"{o.label} needs {o.energy_wh_per_day:.1f} Wh/day, the energy budget is "
            f"{lim.energy:.1f} Wh/day",
        ),
        (
            "downlink",
            o.downlink_bytes_per_day > lim.downlink,
            f"{what} need {_size(o.downlink_bytes_per_day)}/day, the downlink carries "
            f"{_size(budget.downlink_bytes_per_day)}/day",
        ),
        (
            "uplink",
            o.upload_bytes > lim.upload,
            f"{o.label} needs a {_size(o.upload_bytes)} model upload, the uplink carries "
            f"{_size(lim.upload)} in the upload window",
        ),
        ("compute time", busy > lim.busy, f"{o.label} needs {busy / 3600:.1f} h of compute a day"),
    )
    for name, broken, words in checks:
        if broken:
            return name, words
    return "", ""


def _reason(
    k: int,
    jobs: Sequence[Job],
    combo: Sequence[Option],
    lim: _Limits,
    node: NodeProfile,
    budget: LinkBudget,
) -> str:
    job, o = jobs[k], combo[k]
    if o.kind == "raw":
        head = (
            f"raw: the ground model is the most accurate ({o.accuracy:.3f}) and raw frames need "
            f"{_size(o.downlink_bytes_per_day)}/day of the {_size(lim.downlink)}/day downlink"
        )
    elif o.kind == "skip":
        head = "skip: nothing else fits"
    else:
        head = f"{o.label}: accuracy {o.accuracy:.3f}"
    better = [a for a in options(job, node) if _value(job, a) > _value(job, o)]
    better.sort(key=lambda a: (a.kind != "raw", -_value(job, a)))  # stable: option order
    # raw first, then per kind the most valuable option each budget stops: one line per road
    notes: dict[tuple[str, str], str] = {}
    for alt in better:
        budget_name, why = _why_not(job, alt, lim, node, budget)
        if not why:
            swapped = list(combo)
            swapped[k] = alt
            t = _totals(jobs, swapped)
            names = ("energy", "downlink", "memory", "uplink", "compute time")
            limits = (lim.energy, lim.downlink, lim.memory, lim.upload, lim.busy)
            over = [nm for nm, x, cap in zip(names, t[1:], limits, strict=True) if x > cap]
            # it fits alone, so a budget the other jobs already use is what stops it
            budget_name = "shared " + ", ".join(over)
            why = f"{alt.label} does not fit alongside the other jobs' choices ({', '.join(over)})"
        notes.setdefault((alt.kind, budget_name), why)
    return "; ".join([head, *notes.values()])


def _build(
    jobs: Sequence[Job],
    combo: Sequence[Option],
    lim: _Limits,
    node: NodeProfile,
    budget: LinkBudget,
) -> Placement:
    value, energy, down, mem, up, _ = _totals(jobs, combo)
    return Placement(
        choices={j.name: o for j, o in zip(jobs, combo, strict=True)},
        value=value,
        energy_wh_per_day=energy,
        downlink_bytes_per_day=down,
        memory_bytes=int(mem),
        reasons={j.name: _reason(k, jobs, combo, lim, node, budget) for k, j in enumerate(jobs)},
        upload_bytes=int(up),
    )


def explain(placement: Placement) -> str:
    """A fixed-width table of the plan, its totals and the reason for each choice."""
    head = f"{'job':<16} {'option':<28} {'acc':>6} {'s/frame':>8} {'Wh/day':>7} {'down/day':>10}"
    lines = [head, "-" * len(head)]
    for name, o in placement.choices.items():
        lines.append(
            f"{name:<16} {o.label:<28} {o.accuracy:>6.3f} {o.onboard_s_per_frame:>8.3g} "
            f"{o.energy_wh_per_day:>7.2f} {_size(o.downlink_bytes_per_day):>10}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"value {placement.value:.1f} frames·accuracy/day, energy "
        f"{placement.energy_wh_per_day:.2f} Wh/day, downlink "
        f"{_size(placement.downlink_bytes_per_day)}/day, memory {_size(placement.memory_bytes)}, "
        f"upload {_size(placement.upload_bytes)}"
    )
    lines.extend(f"{name}: {why}" for name, why in placement.reasons.items())
    return "\n".join(lines)
