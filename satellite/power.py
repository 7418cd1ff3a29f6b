"""Satellite power budget: battery, solar harvest, eclipse, payload draw and a compute governor.

Why: on BUPT-1 energy and heat, not FLOPS, bounded in-orbit computing (MobiCom'24 COTS study,
satellite.md §1.4), so the platform must know whether a compute job can run without pulling the
battery below its floor, and defer it (never drop it) when it cannot.

Defaults (satellite.md §0, §1.4, §2.5, reconciled by us): the reference's "18 W bus" over a
94-min orbit is 28 Wh, more than the ~23 Wh harvested, so the bus alone would drain the battery.
BUPT-1 consumed ~28 Wh/orbit in total, of which payload compute ~6.7 Wh (when active) and comms
~3 Wh, which leaves ~18 Wh/orbit for the bus: ``baseline_w`` = 11.5 W over a 94.6-min orbit.
The ~23 Wh/orbit harvest only happens in sunlight (64 % of the orbit), so ``harvest_w`` = 23 W
while sunlit. Payload: Pi 4B 2.1 W idle / 4.8 W busy, Atlas 200 DK 7 / 8 W. Radio 12 W while
transmitting (~3 Wh over 15 min of passes). Battery 2 x 115 Wh, start 80 %, floor 30 %.
With the Pi powered and busy about a third of the time, payload is ~20 % of consumption, as on
BUPT-1. A device with no activity on it is powered off (draws nothing).

Integration is exact: loads are piecewise constant and only change at ``advance`` points, and
segments are split at sunlit/eclipse transitions, orbit boundaries and the instant the battery
fills (the surplus is ``curtailed_wh``) or empties (the shortfall is ``unserved_wh``). The SoC
trace is therefore piecewise linear and its minimum lies at a breakpoint.

Comms: ``set_comms`` switches the radio on/off now, and an admission check assumes the current
state lasts; ``schedule_comms`` declares the contact plan's ``[start, end)`` windows ahead of
time, so the integrator switches the radio at those instants by itself (as breakpoints) and
``can_run``/``earliest_start`` see the passes coming. The radio draws ``comms_w`` whenever
either says it is on (they are OR'ed, never double-counted); a caller that schedules its
passes should not also call ``set_comms`` for them, since a manual "on" is assumed to last
through the whole look-ahead and makes admission needlessly conservative during a pass.

With a ``sunlit`` callback the transitions are found by scanning every ``sunlit_scan_s`` and
bisecting to 1 us; an eclipse or sunlit spell shorter than the scan step can be missed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "DAY",
    "DEFAULT_DEVICES",
    "OrbitEnergy",
    "PowerConfig",
    "PowerModel",
]

HOUR = 3600.0
DAY = 86_400.0
DEFAULT_DEVICES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"pi4b": (2.1, 4.8), "atlas200dk": (7.0, 8.0)}
)
_TOL_WH = 1e-9  # float slack so a start found feasible stays feasible when re-checked
_BISECT_S = 1e-6  # sunlit-callback transition resolution
_SCAN_LIMIT_S = 3 * DAY  # give up looking for a sunlit-callback transition after this


def _default_devices() -> Mapping[str, tuple[float, float]]:
    return DEFAULT_DEVICES


@dataclass(frozen=True)
class PowerConfig:
    battery_wh: float = 230.0
    soc_start: float = 0.8
    soc_floor: float = 0.3
    harvest_w: float = 23.0  # while sunlit
    baseline_w: float = 11.5  # bus, always on
    eclipse_fraction: float = 0.36
    orbit_period_s: float = 5676.0
    eclipse_phase: float = 0.0  # where in each orbit (0..1) the eclipse starts
    sunlit: Callable[[float], bool] | None = None  # overrides the fixed eclipse fraction
    devices: Mapping[str, tuple[float, float]] = field(default_factory=_default_devices)
    comms_w: float = 12.0  # radio while transmitting
    sunlit_scan_s: float = 30.0

    def __post_init__(self) -> None:
        def need(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"PowerConfig.{name} must be {what}, got {getattr(self, name)!r}")

        def finite(name: str) -> float:
            value = getattr(self, name)
            need(name, isinstance(value, int | float) and math.isfinite(value), "a finite number")
            return float(value)

        need("battery_wh", finite("battery_wh") > 0, "> 0")
        need("soc_start", 0 <= finite("soc_start") <= 1, "in [0, 1]")
        need("soc_floor", 0 <= finite("soc_floor") < 1, "in [0, 1)")
        need("harvest_w", finite("harvest_w") >= 0, ">= 0")
        need("baseline_w", finite("baseline_w") >= 0, ">= 0")
        need("eclipse_fraction", 0 <= finite("eclipse_fraction") <= 1, "in [0, 1]")
        need("orbit_period_s", finite("orbit_period_s") > 0, "> 0")
        need("eclipse_phase", 0 <= finite("eclipse_phase") < 1, "in [0, 1)")
        need("comms_w", finite("comms_w") >= 0, ">= 0")
        need("sunlit_scan_s", finite("sunlit_scan_s") > 0, "> 0")
        need("sunlit", self.sunlit is None or callable(self.sunlit), "callable or None")
        for name, draw in self.devices.items():
            ok = isinstance(name, str) and bool(name) and len(draw) == 2
            ok = ok and all(isinstance(w, int | float) and math.isfinite(w) for w in draw)
            ok = ok and 0 <= draw[0] <= draw[1]
            need("devices", ok, "name -> (idle_w, busy_w) with 0 <= idle_w <= busy_w")
        object.__setattr__(self, "devices", MappingProxyType(dict(self.devices)))


@dataclass(frozen=True, slots=True)
class OrbitEnergy:
    index: int
    start: float
    end: float
    consumed_wh: float  # all loads demanded: bus + payload + comms
    harvested_wh: float  # solar available while sunlit (including what was curtailed)
    payload_wh: float
    comms_wh: float
    soc_min: float
    soc_end: float
    curtailed_wh: float = 0.0

    @property
    def payload_share(self) -> float:
        return self.payload_wh / self.consumed_wh if self.consumed_wh > 0 else 0.0


class _Sun:
    """When the satellite is sunlit: a fixed eclipse per orbit, or a scanned callback."""

    def __init__(self, config: PowerConfig, origin: float) -> None:
        self._period = config.orbit_period_s
        self._origin = origin
        self._a = config.eclipse_phase * self._period
        self._b = (config.eclipse_phase + config.eclipse_fraction) * self._period
        self._constant: bool | None = None
        if config.eclipse_fraction in (0.0, 1.0):
            self._constant = config.eclipse_fraction == 0.0
        self._fn = config.sunlit
        self._last = (math.inf, math.inf)  # next_change memo: every t in [lo, hi) gives hi
        self._step = config.sunlit_scan_s
        if self._fn is not None:
            self._times = [origin]
            self._states = [bool(self._fn(origin))]
            self._until = origin

    def _extend(self, t: float) -> None:
        assert self._fn is not None
        while self._until < t:
            lo, hi = self._until, self._until + self._step
            before, after = self._states[-1], bool(self._fn(hi))
            if after != before:
                while hi - lo > _BISECT_S:
                    mid = (lo + hi) / 2
                    if bool(self._fn(mid)) == before:
                        lo = mid
                    else:
                        hi = mid
                self._times.append(hi)
                self._states.append(after)
            self._until = hi

    def sunlit_at(self, t: float) -> bool:
        """Callers pass segment midpoints, so boundary rounding never matters."""
        if self._fn is not None:
            self._extend(t)
            return self._states[max(0, bisect.bisect_right(self._times, t) - 1)]
        if self._constant is not None:
            return self._constant
        u = (t - self._origin) % self._period
        return not (self._a <= u < self._b or self._a <= u + self._period < self._b)

    def next_change(self, t: float) -> float:
        """The first transition strictly after ``t``, or ``inf``."""
        if self._fn is not None:
            while True:
                i = bisect.bisect_right(self._times, t)
                if i < len(self._times):
                    return self._times[i]
                if self._until > t + _SCAN_LIMIT_S:
                    return math.inf
                self._extend(max(self._until, t) + 100 * self._step)
        if self._constant is not None:
            return math.inf
        lo, hi = self._last
        if lo <= t < hi:  # hot path: the same answer as last time
            return hi
        o, p, a, b = self._origin, self._period, self._a, self._b
        k = math.floor((t - o) / p)
        # Transitions in time order (a < b <= a + p); the first is never after t.
        prev = o + (k - 1) * p + a
        for x in (o + (k - 1) * p + b, o + k * p + a, o + k * p + b, o + (k + 1) * p + a):
            if x > t:
                self._last = (prev, x)
                return x
            prev = x
        self._last = (prev, o + (k + 1) * p + b)
        return self._last[1]

    def next_sunrise(self, t: float) -> float:
        x = t
        for _ in range(4):
            nxt = self.next_change(x)
            if math.isinf(nxt):
                return nxt
            if not self.sunlit_at((x + nxt) / 2):
                return nxt
            x = nxt
        return math.inf


def _segment(e: float, cap: float, dt_s: float, net_w: float) -> tuple[float, float, float | None]:
    """Battery energy after ``dt_s`` at constant ``net_w``: (end, clipped Wh, time it clipped)."""
    raw = e + net_w * dt_s / HOUR
    if raw > cap and net_w > 0:
        return cap, raw - cap, max(0.0, (cap - e) / net_w * HOUR)
    if raw < 0 and net_w < 0:
        return 0.0, -raw, max(0.0, -e / net_w * HOUR)
    return raw, 0.0, None


class PowerModel:
    """Battery state under piecewise-constant loads, integrated exactly by ``advance``."""

    def __init__(self, config: PowerConfig | None = None, *, start: float = 0.0) -> None:
        self.config = config or PowerConfig()
        self.start = start
        self._cap = self.config.battery_wh
        self._floor = self.config.soc_floor * self._cap
        self._sun = _Sun(self.config, start)
        self._t = start
        self._e = self.config.soc_start * self._cap
        self._activities: dict[str, tuple[str, bool]] = {}
        self._draw: dict[str, float] = dict.fromkeys(self.config.devices, 0.0)  # per device
        self._payload = 0.0  # sum of _draw, kept in step with _activities
        self._comms = False  # set_comms: on until switched off
        self._edges: list[float] = []  # scheduled comms: [s0, e0, s1, e1, ...], disjoint, sorted
        self.curtailed_wh = 0.0
        self.unserved_wh = 0.0  # load the empty battery could not carry
        self._trace_t = [start]
        self._trace_e = [self._e]
        self._orbits: list[OrbitEnergy] = []
        self._orbit = self._new_orbit(0)

    # -- state ------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self._t

    @property
    def energy_wh(self) -> float:
        return self._e

    def sunlit_at(self, t: float) -> bool:
        return self._sun.sunlit_at(t)

    def next_sunrise(self, t: float) -> float:
        return self._sun.next_sunrise(t)

    def device_w(self, device: str) -> float:
        draw = self._draw.get(device)
        if draw is None:
            self._device(device)  # raises
        return draw or 0.0

    def _loads_changed(self) -> None:
        for device, (idle, busy) in self.config.devices.items():
            states = [b for d, b in self._activities.values() if d == device]
            self._draw[device] = (busy if any(states) else idle) if states else 0.0
        self._payload = sum(self._draw.values())

    @property
    def load_w(self) -> float:
        return self._other_w() + self._comms_w(self._t)

    @property
    def comms_windows(self) -> list[tuple[float, float]]:
        """The scheduled comms windows (merged), past ones included."""
        edges = self._edges
        return [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]

    def _other_w(self) -> float:
        """Everything but the radio: bus + payload, constant until the next load change."""
        return self.config.baseline_w + self._payload

    def _comms_w(self, t: float) -> float:
        """Radio draw at ``t`` (pass a segment midpoint: windows are half-open)."""
        on = self._comms or bisect.bisect_right(self._edges, t) % 2 == 1
        return self.config.comms_w if on else 0.0

    def _next_comms_edge(self, t: float) -> float:
        """The first scheduled switch strictly after ``t``, or ``inf``."""
        i = bisect.bisect_right(self._edges, t)
        return self._edges[i] if i < len(self._edges) else math.inf

    def soc(self, t: float) -> float:
        """SoC at ``t``: from the trace for the past, predicted at current loads for the future."""
        if t < self.start:
            raise ValueError(f"t={t} is before the model start {self.start}")
        if t >= self._t:
            return self._predict(self._t, self._e, t, self._other_w())[0] / self._cap
        i = bisect.bisect_right(self._trace_t, t) - 1
        t0, t1 = self._trace_t[i], self._trace_t[i + 1]
        e0, e1 = self._trace_e[i], self._trace_e[i + 1]
        return (e0 + (e1 - e0) * (t - t0) / (t1 - t0)) / self._cap

    def trace(self) -> list[tuple[float, float]]:
        """Every breakpoint so far as ``(t, soc)``."""
        return [(t, e / self._cap) for t, e in zip(self._trace_t, self._trace_e, strict=True)]

    def orbits(self, *, partial: bool = False) -> list[OrbitEnergy]:
        """Completed orbits (and the one in progress if ``partial``)."""
        return self._orbits + ([self._close_orbit(self._t)] if partial else [])

    # -- loads ------------------------------------------------------------------------------

    def set_activity(self, name: str, device: str, busy: bool, *, at: float) -> None:
        """Power ``device`` for activity ``name``: busy, or idle (on but waiting)."""
        self._device(device)
        self.advance(at)
        self._activities[name] = (device, busy)
        self._loads_changed()

    def clear_activity(self, name: str, *, at: float) -> None:
        self.advance(at)
        self._activities.pop(name, None)
        self._loads_changed()

    def set_comms(self, on: bool, *, at: float) -> None:
        """Switch the radio on/off from ``at`` on (OR'ed with the scheduled windows)."""
        self.advance(at)
        self._comms = on

    def schedule_comms(self, windows: Iterable[tuple[float, float]]) -> None:
        """Add contact-plan windows: the radio is on during each ``[start, end)``.

        May be called repeatedly; overlapping or touching windows merge. The part of a window
        before the model time is ignored (the past is integrated already); empty windows are
        skipped."""
        for start, end in windows:
            start, end = float(start), float(end)
            if not (math.isfinite(start) and math.isfinite(end)) or end < start:
                raise ValueError(f"comms window must be finite with start <= end: {(start, end)}")
            start = max(start, self._t)
            if end <= start:
                continue
            edges = self._edges
            i = bisect.bisect_left(edges, start)  # edges before i are < start
            j = bisect.bisect_right(edges, end)  # edges from j on are > end
            if i % 2 == 1:  # start falls inside (or at the end of) window (i-1)//2
                i -= 1
                start = edges[i]
            if j % 2 == 1:  # end falls inside (or at the start of) a window
                end = edges[j]
                j += 1
            edges[i:j] = [start, end]

    # -- integration ------------------------------------------------------------------------

    def advance(self, to_t: float) -> None:
        if to_t < self._t:
            raise ValueError(f"cannot advance to {to_t}: the model is already at {self._t}")
        payload = self._payload
        other = self.config.baseline_w + payload
        while self._t < to_t:
            t = self._t
            orbit_end = self.start + (self._orbit.index + 1) * self.config.orbit_period_s
            b = min(to_t, self._sun.next_change(t), orbit_end, self._next_comms_edge(t))
            comms = self._comms_w((t + b) / 2)
            load = other + comms
            sunlit = self._sun.sunlit_at((t + b) / 2)
            harvest = self.config.harvest_w if sunlit else 0.0
            e, clipped, kink = _segment(self._e, self._cap, b - t, harvest - load)
            hours = (b - t) / HOUR
            o = self._orbit
            curtailed = clipped if harvest > load else 0.0
            self.curtailed_wh += curtailed
            self.unserved_wh += clipped - curtailed
            self._orbit = OrbitEnergy(
                o.index,
                o.start,
                o.end,
                o.consumed_wh + load * hours,
                o.harvested_wh + harvest * hours,
                o.payload_wh + payload * hours,
                o.comms_wh + comms * hours,
                min(o.soc_min, e / self._cap),
                e / self._cap,
                o.curtailed_wh + curtailed,
            )
            if kink is not None and 0 < kink < b - t:
                self._record(t + kink, 0.0 if e == 0.0 else self._cap)
            self._t, self._e = b, e
            self._record(b, e)
            if b == orbit_end:
                self._orbits.append(self._close_orbit(b))
                self._orbit = self._new_orbit(self._orbit.index + 1)

    def _record(self, t: float, e: float) -> None:
        if t > self._trace_t[-1]:
            self._trace_t.append(t)
            self._trace_e.append(e)

    def _new_orbit(self, index: int) -> OrbitEnergy:
        start = self.start + index * self.config.orbit_period_s
        soc = self._e / self._cap
        return OrbitEnergy(index, start, start, 0.0, 0.0, 0.0, 0.0, soc, soc)

    def _close_orbit(self, end: float) -> OrbitEnergy:
        o = self._orbit
        return OrbitEnergy(
            o.index, o.start, end, o.consumed_wh, o.harvested_wh, o.payload_wh, o.comms_wh,
            o.soc_min, o.soc_end, o.curtailed_wh,
        )  # fmt: skip

    def _predict(self, t0: float, e0: float, t1: float, other_w: float) -> tuple[float, float]:
        """(energy at ``t1``, minimum energy over [t0, t1]) with ``other_w`` (all but the radio)
        constant and the radio as set/scheduled; no side effects."""
        t, e, low = t0, e0, e0
        while t < t1:
            b = min(t1, self._sun.next_change(t), self._next_comms_edge(t))
            mid = (t + b) / 2
            harvest = self.config.harvest_w if self._sun.sunlit_at(mid) else 0.0
            e = _segment(e, self._cap, b - t, harvest - other_w - self._comms_w(mid))[0]
            low = min(low, e)
            t = b
        return e, low

    # -- admission --------------------------------------------------------------------------

    def _device(self, device: str) -> tuple[float, float]:
        try:
            return self.config.devices[device]
        except KeyError:
            known = sorted(self.config.devices)
            raise ValueError(f"unknown device {device!r}; known: {known}") from None

    def _lookahead_end(self, end: float) -> float:
        """Where the worst-case look-ahead after a job ending at ``end`` stops: the end of the
        next eclipse (at most an orbit on), or later, the end of the last scheduled comms window
        that starts before the eclipse after that: a window that overlaps the look-ahead, or
        falls in the sunlit spell after it (the radio out-draws the sun, so a battery left at
        the floor at sunrise would dip under it)."""
        period = self.config.orbit_period_s
        tail = min(self._sun.next_sunrise(end), end + period)
        dusk = min(self._sun.next_change(tail), tail + period)
        i = bisect.bisect_left(self._edges, dusk)  # edges[i-1] < dusk
        if i > 0:
            last_end = self._edges[i] if i % 2 == 1 else self._edges[i - 1]
            tail = max(tail, last_end)
        return tail

    def _job_low(self, device: str, duration_s: float, s: float, e_s: float) -> float:
        """Lowest energy if the job runs over [s, s+d] and the other loads continue, with the
        radio as set/scheduled, through the look-ahead after it (``_lookahead_end``): the worst
        case of the coming sunlight/eclipse and contact schedule."""
        if duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {duration_s}")
        base = self._other_w()
        extra = max(0.0, self._device(device)[1] - self.device_w(device))
        end = s + duration_s
        e_end, low_job = self._predict(s, e_s, end, base + extra)
        tail = self._lookahead_end(end)
        return min(low_job, self._predict(end, e_end, tail, base)[1])

    def _at(self, at: float) -> float:
        if at < self._t:
            raise ValueError(f"at={at} is before the model time {self._t}")
        return self._predict(self._t, self._e, at, self._other_w())[0]

    def can_run(self, device: str, duration_s: float, *, at: float) -> bool:
        """Whether running ``device`` busy for ``duration_s`` from ``at`` keeps the floor."""
        return self._job_low(device, duration_s, at, self._at(at)) >= self._floor - _TOL_WH

    def earliest_start(
        self, device: str, duration_s: float, *, after: float, horizon_s: float = 2 * DAY
    ) -> float | None:
        """First start at or after ``after`` (within ``horizon_s``) that keeps the floor.

        The job's lowest SoC is piecewise linear in the start time with kinks where the start or
        the end crosses a sunlit/eclipse transition or a scheduled comms switch, so those are
        the candidates; between the last infeasible and first feasible one the boundary is
        bisected to 1 ms."""
        base = self._other_w()
        limit = after + horizon_s
        cands = {after}
        x = after
        while (x := self._sun.next_change(x)) <= limit:
            cands.add(x)
            if x - duration_s > after:
                cands.add(x - duration_s)
        lo_i = bisect.bisect_right(self._edges, after - duration_s)
        for x in self._edges[lo_i : bisect.bisect_right(self._edges, limit)]:
            for c in (x, x - duration_s):
                if after < c <= limit:
                    cands.add(c)
        t, e = after, self._at(after)
        prev: tuple[float, float] | None = None
        for c in sorted(cands):
            e = self._predict(t, e, c, base)[0]
            t = c
            if self._job_low(device, duration_s, c, e) < self._floor:
                prev = (c, e)
                continue
            if prev is None:
                return c
            lo, lo_e = prev
            hi = c
            while hi - lo > 1e-3:
                mid = (lo + hi) / 2
                mid_e = self._predict(lo, lo_e, mid, base)[0]
                if self._job_low(device, duration_s, mid, mid_e) >= self._floor:
                    hi = mid
                else:
                    lo, lo_e = mid, mid_e
            return hi
        return None
