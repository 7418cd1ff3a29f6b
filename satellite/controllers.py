"""The ContactPlan controller: turns each satellite's contact plan into what the cloud acts on.

For every ``ContactPlan`` it validates the windows (or computes them from an orbit and the
named ``GroundStation``s), keeps ``status.nextPass`` current, and writes on the Node named by
``spec.nodeName`` the generic annotations ``orbiter.io/contact-windows`` (a compact JSON list
of upcoming ``[startUnix, endUnix]``) and ``orbiter.io/contact-acquisition-seconds``. The
orchestration layer's node lifecycle reads only those: to it a node is "reachable only in
these windows", never "a satellite", so it expects silence between passes instead of
declaring the node lost (satellite.md §5.3 item 8).

- Level-triggered: a plan, one of its stations or its Node changing triggers a look, and each
  look asks to be queued again at the next window boundary (on the injected ``clock``).
- A problem (a window ending before it starts, an unknown station, an unparseable date) is a
  ``Valid=False`` condition naming the window index and field; the Node is then left as it
  was, so a bad edit never erases a good plan's windows.
- Orbit plans need ``orbiter.satellite.orbit`` (and sgp4); without it ``Computed=False``
  (``OrbitSupportMissing``). Computed windows are cached per plan generation and station
  specs, and recomputed once half the horizon has elapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orbiter.orchestration.client import NODES, Client, NotFoundError
from orbiter.orchestration.cloud import ControllerFactory
from orbiter.orchestration.cloud.controlling import Controller, Informers, meta
from orbiter.orchestration.cloud.nodelifecycle import ACQUISITION_ANNOTATION, WINDOWS_ANNOTATION

from .apis import CONTACT_PLANS, GROUND_STATIONS
from .contacts import DAY

__all__ = [
    "ACQUISITION_ANNOTATION",
    "WINDOWS_ANNOTATION",
    "ContactPlanController",
    "Window",
    "annotation_windows",
    "controllers",
    "parse_windows",
]

log = logging.getLogger(__name__)

ANNOTATED_MIN = 16  # windows on the node: at least these many, and every one in the next day
ORBIT_LOOKBACK = 900.0  # computed from a little before now, to catch a pass in progress


MAX_STATUS_WINDOWS = 256  # a week of passes over several stations


def _window_data(w: Window) -> dict[str, Any]:
    data: dict[str, Any] = {"start": _rfc3339(w.start), "end": _rfc3339(w.end)}
    if w.station:
        data["station"] = w.station
    if w.rate_down is not None:
        data["rateDown"] = w.rate_down
    if w.rate_up is not None:
        data["rateUp"] = w.rate_up
    if w.max_elevation is not None:
        data["maxElevation"] = round(w.max_elevation, 2)
    return data


@dataclass(frozen=True, slots=True)
class Window:
    start: float  # Unix seconds
    end: float
    station: str = ""
    rate_down: int | None = None  # bits/s
    rate_up: int | None = None
    max_elevation: float | None = None


def _parse_time(value: Any) -> float | None:
    """Unix seconds of an RFC 3339 date-time (an offset is required); None if it is not."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if parsed.tzinfo is None else parsed.timestamp()


def parse_windows(
    spec: Mapping[str, Any], stations: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Window], list[str]]:
    """A plan's data windows (sorted) and its problems, each naming the field
    (``spec.windows[2].end: ...``); ``stations``: GroundStation specs by name."""
    windows: list[Window] = []
    problems: list[str] = []
    for i, raw in enumerate(spec.get("windows") or []):
        field = f"spec.windows[{i}]"
        raw = raw if isinstance(raw, Mapping) else {}
        start, end = _parse_time(raw.get("start")), _parse_time(raw.get("end"))
        for name, value in (("start", start), ("end", end)):
            if value is None:
                problems.append(f"{field}.{name}: not an RFC 3339 date-time: {raw.get(name)!r}")
        if start is not None and end is not None and end <= start:
            problems.append(f"{field}.end: {raw['end']} is not after start {raw['start']}")
        station = str(raw.get("station") or "")
        if station and station not in stations:
            problems.append(f"{field}.station: no GroundStation {station!r}")
        if problems or start is None or end is None:
            continue
        default = stations.get(station) or {}
        windows.append(
            Window(
                start,
                end,
                station,
                raw.get("rateDown", default.get("rateDown")),
                raw.get("rateUp", default.get("rateUp")),
                raw.get("maxElevation"),
            )
        )
    return sorted(windows, key=lambda w: (w.start, w.station)), problems


def annotation_windows(windows: Iterable[Window], now: float) -> list[list[int]]:
    """The node's view: upcoming windows (stations merged, so overlaps become one), every
    one starting within a day and at least ``ANNOTATED_MIN`` if the plan has them."""
    merged: list[list[int]] = []
    for w in sorted(windows, key=lambda w: w.start):
        if w.end <= now:
            continue
        start, end = math.floor(w.start), math.ceil(w.end)
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    within_day = sum(1 for s, _ in merged if s < now + DAY)
    return merged[: max(ANNOTATED_MIN, within_day)]


def _longest_gap(windows: list[Window]) -> int:
    gap, reach = 0.0, None
    for w in sorted(windows, key=lambda w: w.start):
        if reach is not None and w.start > reach:
            gap = max(gap, w.start - reach)
        reach = w.end if reach is None else max(reach, w.end)
    return round(gap)


def _rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _orbit_module() -> Any:
    """``orbiter.satellite.orbit`` if it and sgp4 import, else None."""
    try:
        return importlib.import_module("orbiter.satellite.orbit")
    except ImportError:
        return None


def _compute(
    module: Any, node: str, spec: Mapping[str, Any], stations: list[tuple[str, Any]], start: float
) -> list[Window]:
    orbit = spec.get("orbit") or {}
    if orbit.get("tle"):
        sat = module.Orbit.from_tle(node, orbit["tle"]["line1"], orbit["tle"]["line2"])
    else:
        el = orbit["elements"]
        epoch = _parse_time(el.get("epoch"))
        if epoch is None:
            bad = el.get("epoch")
            raise ValueError(f"spec.orbit.elements.epoch: not an RFC 3339 date-time: {bad!r}")
        sat = module.Orbit.from_elements(
            node,
            altitude_km=float(el["altitudeKm"]),
            inclination_deg=el.get("inclinationDeg"),
            raan_deg=float(el["raanDeg"]),
            mean_anomaly_deg=float(el["meanAnomalyDeg"]),
            epoch=datetime.fromtimestamp(epoch, UTC),
        )
    gs = [
        module.GroundStation(
            name,
            float(s["latitude"]),
            float(s["longitude"]),
            float(s.get("altitude", 0.0)),
            float(s.get("elevationMask", 5.0)),
            float(s.get("rateDown", 50e6)),
            float(s.get("rateUp", 1e6)),
        )
        for name, s in stations
    ]
    days = float(spec.get("horizonHours", 48)) / 24
    plan = module.compute_contacts([sat], gs, start=datetime.fromtimestamp(start, UTC), days=days)
    return [
        Window(c.start, c.end, c.station, round(c.rate_down), round(c.rate_up), c.max_elevation)
        for c in plan
    ]


def _condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


class ContactPlanController(Controller[str]):
    """Keys are ContactPlan names. ``clock``: Unix seconds (``time.time``; a fake in tests)."""

    name = "contactplan-controller"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.clock = clock
        self.plans = informers(CONTACT_PLANS)
        self.stations = informers(GROUND_STATIONS)
        self.nodes = informers(NODES)
        self.plans.on_event(self._on_plan)
        self.stations.on_event(self._on_station)
        self.nodes.on_event(self._on_node)
        self._annotated: dict[str, str] = {}  # plan -> the node it last annotated
        self._computed: dict[str, tuple[Any, float, list[Window]]] = {}  # plan -> key, from, ws

    def keys(self) -> Iterable[str]:
        return [meta(p).get("name", "") for p in self.plans.items()]

    async def _on_plan(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.enqueue(meta(obj).get("name", ""))

    async def _on_station(
        self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        for name in self.keys():  # few plans, few stations: no index needed
            self.enqueue(name)

    async def _on_node(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ours = (WINDOWS_ANNOTATION, ACQUISITION_ANNOTATION)
        now = meta(obj).get("annotations") or {}
        before = meta(old).get("annotations") or {} if old else {}
        if old is not None and all(now.get(k) == before.get(k) for k in ours):
            return  # heartbeats: nothing of ours changed
        node = meta(obj).get("name")
        for plan in self.plans.items():
            if (plan.get("spec") or {}).get("nodeName") == node:
                self.enqueue(meta(plan)["name"])

    # --- one plan ------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        plan = self.plans.get(key)
        node = str(((plan or {}).get("spec") or {}).get("nodeName") or "")
        previous = self._annotated.get(key)
        if previous and previous != node:
            await self._release(key, previous)
        if plan is None:
            self._computed.pop(key, None)
            return None
        now = self.clock()
        spec = plan.get("spec") or {}
        windows, conditions, recompute_at = await self._windows(key, plan, now)
        valid = all(c["status"] == "True" for c in conditions)
        status: dict[str, Any] = {"windowsComputed": len(windows)}
        upcoming = [w for w in windows if w.end > now]
        nxt = upcoming[0] if upcoming else None
        status["nextPass"] = (
            {"start": _rfc3339(nxt.start), "end": _rfc3339(nxt.end), "station": nxt.station}
            if nxt
            else None
        )
        span = max(DAY, windows[-1].end - windows[0].start) if windows else DAY
        if spec.get("orbit"):
            span = float(spec.get("horizonHours", 48)) * 3600
        status["passesPerDay"] = round(len(windows) * DAY / span, 2)
        status["longestGapSeconds"] = _longest_gap(windows)
        if spec.get("orbit"):
            # What the orbit gave, as data: the placement planner budgets the downlink from it.
            status["windows"] = [_window_data(w) for w in windows[:MAX_STATUS_WINDOWS]]
        if valid:
            conditions.append(await self._annotate(key, node, spec, windows, now))
        await self._write_status(plan, status, conditions)
        if not valid:
            return None
        boundaries = [t for w in windows for t in (w.start, w.end) if t > now]
        if recompute_at is not None:
            boundaries.append(recompute_at)
        return min(boundaries) - now + 0.01 if boundaries else None

    async def _windows(
        self, key: str, plan: dict[str, Any], now: float
    ) -> tuple[list[Window], list[dict[str, Any]], float | None]:
        """The plan's windows, its Valid/Computed conditions and when to recompute."""
        spec = plan.get("spec") or {}
        stations = {meta(s)["name"]: s.get("spec") or {} for s in self.stations.items()}
        if spec.get("windows") and spec.get("orbit"):
            problem = "spec: give windows or orbit, not both"
            return [], [_condition("Valid", False, "InvalidPlan", problem)], None
        if not spec.get("orbit"):
            windows, problems = parse_windows(spec, stations)
            if problems:
                return [], [_condition("Valid", False, "InvalidWindow", "; ".join(problems))], None
            return windows, [_condition("Valid", True, "Valid", f"{len(windows)} windows")], None
        problems = []
        orbit = spec["orbit"]
        if not orbit.get("tle") and not orbit.get("elements"):
            problems.append("spec.orbit: needs tle or elements")
        names = [str(n) for n in spec.get("stations") or []]
        if not names:
            problems.append("spec.stations: an orbit needs ground stations")
        for i, name in enumerate(names):
            if name not in stations:
                problems.append(f"spec.stations[{i}]: no GroundStation {name!r}")
        if problems:
            return [], [_condition("Valid", False, "InvalidOrbit", "; ".join(problems))], None
        valid = _condition("Valid", True, "Valid", "orbit and stations found")
        module = _orbit_module()
        if module is None:
            why = "orbiter.satellite.orbit (with sgp4) is not installed"
            return [], [valid, _condition("Computed", False, "OrbitSupportMissing", why)], None
        horizon = float(spec.get("horizonHours", 48)) * 3600
        cache_key = (meta(plan).get("uid"), meta(plan).get("generation"), repr(stations))
        cached = self._computed.get(key)
        if cached is None or cached[0] != cache_key or now >= cached[1] + horizon / 2:
            start = now - ORBIT_LOOKBACK
            chosen = [(n, stations[n]) for n in names]
            try:
                windows = await asyncio.to_thread(
                    _compute, module, meta(plan)["name"], spec, chosen, start
                )
            except (ValueError, KeyError, TypeError) as exc:
                failed = _condition("Computed", False, "ComputeFailed", str(exc))
                return [], [_condition("Valid", False, "InvalidOrbit", str(exc)), failed], None
            cached = self._computed[key] = (cache_key, start, windows)
        message = f"{len(cached[2])} windows over {horizon / 3600:g} h from {_rfc3339(cached[1])}"
        computed = _condition("Computed", True, "Computed", message)
        return cached[2], [valid, computed], cached[1] + horizon / 2

    async def _annotate(
        self, key: str, node: str, spec: Mapping[str, Any], windows: list[Window], now: float
    ) -> dict[str, Any]:
        current = self.nodes.get(node)
        if current is None:
            return _condition("NodeAnnotated", False, "NodeNotFound", f"no Node {node!r}")
        wanted = {
            WINDOWS_ANNOTATION: json.dumps(annotation_windows(windows, now), separators=(",", ":")),
            ACQUISITION_ANNOTATION: f"{float(spec.get('acquisitionSeconds', 60)):g}",
        }
        have = meta(current).get("annotations") or {}
        if any(have.get(k) != v for k, v in wanted.items()):
            await self.client.patch(NODES, node, {"metadata": {"annotations": wanted}})
        self._annotated[key] = node
        count = len(json.loads(wanted[WINDOWS_ANNOTATION]))
        return _condition("NodeAnnotated", True, "Annotated", f"{count} windows on Node {node}")

    async def _release(self, key: str, node: str) -> None:
        """Take the windows off a node no plan names any more."""
        self._annotated.pop(key, None)
        if any((p.get("spec") or {}).get("nodeName") == node for p in self.plans.items()):
            return
        cleared = {WINDOWS_ANNOTATION: None, ACQUISITION_ANNOTATION: None}
        with contextlib.suppress(NotFoundError):
            await self.client.patch(NODES, node, {"metadata": {"annotations": cleared}})

    async def _write_status(
        self, plan: dict[str, Any], status: dict[str, Any], conditions: list[dict[str, Any]]
    ) -> None:
        old = plan.get("status") or {}
        previous = {c.get("type"): c for c in old.get("conditions") or []}
        stamp = _rfc3339(self.clock())
        for c in conditions:
            before = previous.get(c["type"]) or {}
            same = before.get("status") == c["status"]
            c["lastTransitionTime"] = before.get("lastTransitionTime", stamp) if same else stamp
        status["conditions"] = conditions
        patch = {k: v for k, v in status.items() if old.get(k) != v}
        if not patch:
            return
        m = meta(plan)
        body = {"metadata": {"resourceVersion": m["resourceVersion"]}, "status": patch}
        await self.client.patch(CONTACT_PLANS, m["name"], body, subresource="status")


def controllers(*, clock: Callable[[], float] = time.time) -> list[ControllerFactory]:
    """The satellite layer's controllers, as factories for ``ControllerManager(extra=...)``
    or ``Cloud(controllers=...)``."""
    return [functools.partial(ContactPlanController, clock=clock)]
