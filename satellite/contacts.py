"""Contact windows: when a satellite can talk to a ground station, and how fast.

A ``Contact`` is ION's ``(start, end, from, to, rate)`` tuple with both directions' rates
(satellite links are asymmetric) and the peak elevation. Times are seconds on the plan's own
time base: Unix seconds for plans computed from an orbit, seconds from the start for
synthetic ones. A ``ContactPlan`` is an immutable, sorted list of them with the questions the
hubs, the node lifecycle and the simulator ask: am I in contact, when is the next pass, how
long is the gap.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

__all__ = [
    "DAY",
    "ORBIT_PERIOD",
    "Contact",
    "ContactPlan",
    "PlanStats",
    "plan_stats",
    "synthetic_plan",
]

DAY = 86_400.0
ORBIT_PERIOD = 94.6 * 60  # 500 km circular orbit (satellite.md §2.5)


@dataclass(frozen=True, slots=True)
class Contact:
    start: float
    end: float
    satellite: str
    station: str
    rate_down: float  # bits/s, satellite -> ground
    rate_up: float  # bits/s, ground -> satellite
    max_elevation: float = 0.0  # degrees

    def __post_init__(self) -> None:
        if not self.end > self.start:
            raise ValueError(f"contact ends ({self.end}) before it starts ({self.start})")
        if self.rate_down < 0 or self.rate_up < 0:
            raise ValueError("contact rates must not be negative")

    @property
    def duration(self) -> float:
        return self.end - self.start

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end


class ContactPlan:
    """Contacts sorted by start; immutable. Queries are per satellite."""

    def __init__(self, contacts: Iterable[Contact] = ()) -> None:
        self.contacts: tuple[Contact, ...] = tuple(
            sorted(contacts, key=lambda c: (c.start, c.satellite, c.station))
        )
        by_sat: dict[str, list[Contact]] = {}
        for c in self.contacts:
            by_sat.setdefault(c.satellite, []).append(c)
        self._by_sat = {s: tuple(cs) for s, cs in by_sat.items()}
        self._starts = {s: [c.start for c in cs] for s, cs in by_sat.items()}
        # The longest contact bounds how far back one that covers a time can have started.
        self._longest = {s: max(c.duration for c in cs) for s, cs in by_sat.items()}

    def __iter__(self) -> Iterator[Contact]:
        return iter(self.contacts)

    def __len__(self) -> int:
        return len(self.contacts)

    def __repr__(self) -> str:
        return f"ContactPlan({len(self.contacts)} contacts, satellites={self.satellites})"

    @property
    def satellites(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_sat))

    def for_satellite(self, satellite: str) -> tuple[Contact, ...]:
        return self._by_sat.get(satellite, ())

    def current(self, satellite: str, t: float) -> Contact | None:
        """The contact ``satellite`` is in at ``t`` (the one ending last if they overlap)."""
        contacts = self._by_sat.get(satellite, ())
        starts = self._starts.get(satellite, [])
        first = bisect.bisect_left(starts, t - self._longest.get(satellite, 0.0))
        live = [c for c in contacts[first : bisect.bisect_right(starts, t)] if c.covers(t)]
        return max(live, key=lambda c: c.end) if live else None

    def next_contact(self, satellite: str, t: float) -> Contact | None:
        """The contact in progress at ``t``, else the first one starting after it."""
        now = self.current(satellite, t)
        if now is not None:
            return now
        contacts = self._by_sat.get(satellite, ())
        i = bisect.bisect_right(self._starts.get(satellite, []), t)
        return contacts[i] if i < len(contacts) else None

    def merged(self, satellite: str) -> tuple[Contact, ...]:
        """``satellite``'s contacts with overlapping (or touching) ones across stations joined
        into one: what the satellite sees as "connected". Stations are joined with ``+``, rates
        and elevation are the best of the merged contacts."""
        out: list[Contact] = []
        for c in self._by_sat.get(satellite, ()):
            last = out[-1] if out else None
            if last is None or c.start > last.end:
                out.append(c)
                continue
            stations = last.station.split("+")
            out[-1] = replace(
                last,
                end=max(last.end, c.end),
                station=last.station if c.station in stations else f"{last.station}+{c.station}",
                rate_down=max(last.rate_down, c.rate_down),
                rate_up=max(last.rate_up, c.rate_up),
                max_elevation=max(last.max_elevation, c.max_elevation),
            )
        return tuple(out)


@dataclass(frozen=True, slots=True)
class PlanStats:
    passes_per_day: float
    mean_duration_s: float
    contact_s_per_day: float
    longest_gap_s: float  # between consecutive merged contacts; the whole span if fewer than 2


def plan_stats(plan: ContactPlan, satellite: str, *, days: float) -> PlanStats:
    """The §3.4 figures for one satellite over a plan spanning ``days``, counting overlapping
    passes over several stations once (``ContactPlan.merged``)."""
    if days <= 0:
        raise ValueError("days must be positive")
    contacts = plan.merged(satellite)
    total = sum(c.duration for c in contacts)
    gaps = [b.start - a.end for a, b in itertools.pairwise(contacts)]
    return PlanStats(
        passes_per_day=len(contacts) / days,
        mean_duration_s=total / len(contacts) if contacts else 0.0,
        contact_s_per_day=total / days,
        longest_gap_s=max(gaps) if gaps else days * DAY,
    )


def synthetic_plan(
    satellites: str | Sequence[str] = "sat-0",
    *,
    passes_per_day: int = 6,
    duration: float = 480.0,
    days: float = 7.0,
    rate_down: float = 50e6,
    rate_up: float = 1e6,
    station: str = "ground",
    start: float = 0.0,
    first_pass: float = 8 * 3600.0,
    period: float = ORBIT_PERIOD,
    stagger: float = 0.0,
) -> ContactPlan:
    """``passes_per_day`` passes of ``duration`` seconds a day, clustered as a sun-synchronous
    orbit's are: half in a morning group and half 12 h later, one orbit ``period`` apart
    within a group (so the long gaps are ~9-10 h, as over a mid-latitude station). The
    ``stagger`` shifts each further satellite's passes by that many seconds."""
    if passes_per_day < 1:
        raise ValueError("passes_per_day must be at least 1")
    if duration <= 0 or duration >= period:
        raise ValueError(f"duration must be in (0, {period}) seconds")
    names = [satellites] if isinstance(satellites, str) else list(satellites)
    groups = [(passes_per_day + 1) // 2, passes_per_day // 2]
    contacts = []
    for n, sat in enumerate(names):
        for day in range(int(days) + 1):
            for g, count in enumerate(groups):
                for k in range(count):
                    t0 = start + day * DAY + first_pass + g * DAY / 2 + k * period + n * stagger
                    if t0 + duration <= start + days * DAY:
                        contacts.append(
                            Contact(t0, t0 + duration, sat, station, rate_down, rate_up, 45.0)
                        )
    return ContactPlan(contacts)
