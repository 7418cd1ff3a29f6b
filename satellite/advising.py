"""The satellite placement advisor: the global manager asks it before placing an edge worker.

The global manager (``orbiter.collab``) checks memory and cpu requests; it cannot know that a
satellite Node has a daily downlink, an energy budget and frames with a deadline. This module
plugs the placement planner (``placement.plan_placement``) into its generic hook
(``orbiter.collab.globalmanager.advice``): for a Node with a ``SatelliteProfile`` of the same
name, it builds the planner's inputs from the API objects and turns the chosen option into the
edge worker's environment, or refuses the placement with the planner's reason.

Inputs, and what happens when they are absent (missing data never blocks a user who does not
profile; malformed data is refused with the field named, since a wrong unit yields a wrong plan):

- the node: ``SatelliteProfile.spec`` (``memoryBytes``, ``flopsPerSecond``, ``devices``' busy
  and idle watts summed, ``power`` with harvest counted only in sunlight). No profile: no
  opinion (None). Without ``memoryBytes`` or ``flopsPerSecond``: not consulted.
- the link: the ``windows`` of every ``ContactPlan`` whose ``spec.nodeName`` is the node (the
  given ones, or for an orbit plan those its controller computed and published in
  ``status.windows``; rates from the window, else its GroundStation, else 50 Mbit/s down and
  1 Mbit/s up),
  averaged over the days they cover (n passes span n mean spacings), less acquisition and
  the profile's ``link.frameErrorRate`` and ``link.abortProbability``. No such
  windows: not consulted.
- the job: annotations on the JointInferenceService (:data:`FRAMES_PER_DAY`,
  :data:`FRAME_BYTES`, :data:`DEADLINE_SECONDS`, optionally :data:`RESULT_BYTES`) and the edge
  Model's :data:`PROFILE_ANNOTATION`, JSON of this shape (unknown keys are refused)::

      {"modelBytes": 90000000, "groundAccuracy": 0.93,
       "cuts": [{"index": 1, "flops": 4e9, "activationBytes": 200000,
                 "memoryBytes": 300000000, "paramBytes": 20000000}],      # paramBytes optional
       "exits": [{"name": "early", "cut": 1, "accuracy": 0.8,
                  "thresholds": [{"threshold": 0.6, "hardFraction": 0.2,  # thresholds optional
                                  "easyAccuracy": 0.9}]}]}

  Any of them missing: allowed, "no model profile: planner not consulted".
- the node's other jobs: every JointInferenceService whose edge worker is pinned to the same
  node and profiled is planned together with this one (in name order, so every service's look
  computes the same plan): they share the node's memory, energy and downlink. A service sees
  a neighbour's arrival at its own next look (an event of its own, or the resync).

The planner's choice becomes env the worker SDK understands (``orbiter.collab.mining``):
``raw`` sends every frame down before any on-board inference (``HEM_NAME=CloudOnly``,
``MINING_MODE=mining-then-inference``); ``split@i`` sets ``CUT_POINT`` and offloads every
frame's activations (``CloudOnly``); an on-board exit sets ``EXIT_NAME`` and ``CUT_POINT``
and either keeps every frame on board (``EdgeOnly``) or mines hard examples below the chosen
threshold (``HEM_THRESHOLD``, written into the spec's filter's threshold parameter, or
``CrossEntropy`` for a filter without one); ``skip`` refuses the worker. Every accepted
placement carries ``PLACEMENT_OPTION`` (``raw``, ``split``, ``onboard``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from orbiter.collab.apis import JOINT_INFERENCE_SERVICES, MODELS
from orbiter.collab.globalmanager import Advice
from orbiter.orchestration.client import Client, NotFoundError

from .apis import CONTACT_PLANS, GROUND_STATIONS, SATELLITE_PROFILES
from .contacts import DAY, Contact, ContactPlan
from .controllers import parse_windows
from .placement import Option, plan_placement
from .power import PowerConfig
from .profiles import CutPoint, ExitPoint, HemPoint, Job, LinkBudget, ModelProfile, NodeProfile

__all__ = [
    "DEADLINE_SECONDS",
    "FRAMES_PER_DAY",
    "FRAME_BYTES",
    "NOT_CONSULTED",
    "PROFILE_ANNOTATION",
    "RESULT_BYTES",
    "ProfileError",
    "advice_for",
    "advise",
    "job_of",
    "link_budget",
    "model_profile",
    "node_profile",
    "satellite_advisor",
]

_PREFIX = "satellite.orbiter.io"
PROFILE_ANNOTATION = f"{_PREFIX}/profile"  # on the edge Model: the JSON above
FRAMES_PER_DAY = f"{_PREFIX}/frames-per-day"  # on the JointInferenceService
FRAME_BYTES = f"{_PREFIX}/frame-bytes"
DEADLINE_SECONDS = f"{_PREFIX}/deadline-seconds"
RESULT_BYTES = f"{_PREFIX}/result-bytes"  # optional: the planner's default is 1 KiB
NOT_CONSULTED = "no model profile: planner not consulted"
MAX_LIST = 32  # cuts, exits, thresholds per profile
MAX_JOBS = 12  # profiled services planned together on one node (the search is exact)

# The stations' defaults when neither a window nor its GroundStation gives a rate (as the
# ContactPlan controller computes orbit windows).
_RATE_DOWN, _RATE_UP = 50e6, 1e6
# For a profile that gives no ``power``: BUPT-1's, as the power model has it (harvest while
# sunlit, bus baseline, share of the orbit in eclipse).
_POWER = PowerConfig()
_HARVEST_W, _BASELINE_W, _ECLIPSE = _POWER.harvest_w, _POWER.baseline_w, _POWER.eclipse_fraction
# Filters whose hard-example cut is one threshold: the parameter the planner's threshold sets.
_THRESHOLD_PARAMETER = {
    "Threshold": "threshold",
    "ThresholdFilter": "threshold",
    "CrossEntropy": "threshold_cross_entropy",
    "CrossEntropyFilter": "threshold_cross_entropy",
    "IBT": "threshold_box",
    "IBTFilter": "threshold_box",
}


class ProfileError(ValueError):
    """A profile or annotation that cannot be read; the message names the field."""


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    m = (obj or {}).get("metadata")
    return m if isinstance(m, Mapping) else {}


def _number(obj: Mapping[str, Any], key: str, where: str, *, integer: bool = False) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "an integer" if integer else "a number"
        raise ProfileError(f"{where}.{key}: must be {kind}, got {value!r}")
    if not math.isfinite(value) or (integer and float(value) != int(value)):
        raise ProfileError(f"{where}.{key}: must be a finite {'integer' if integer else 'number'}")
    return float(value)


def _object(
    value: Any, where: str, keys: Iterable[str], optional: Iterable[str] = ()
) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ProfileError(f"{where}: must be an object, got {value!r:.80}")
    required, allowed = set(keys), set(keys) | set(optional)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ProfileError(
            f"{where}: unknown field {unknown[0]!r} (takes {', '.join(sorted(allowed))})"
        )
    missing = sorted(required - set(value))
    if missing:
        raise ProfileError(f"{where}.{missing[0]}: required")
    return dict(value)


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProfileError(f"{where}: must be a list, got {value!r:.80}")
    if len(value) > MAX_LIST:
        # Each entry multiplies the planner's options: a user's annotation must not be able
        # to make the cloud plan for minutes.
        raise ProfileError(f"{where}: at most {MAX_LIST} entries, not {len(value)}")
    return value


def model_profile(name: str, text: str) -> ModelProfile:
    """The :class:`ModelProfile` in an edge Model's :data:`PROFILE_ANNOTATION`; ProfileError
    naming the field (``cuts[1].flops: ...``) when it does not parse or is out of range."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"not JSON: {exc}") from None
    top = _object(raw, "profile", ("modelBytes", "groundAccuracy", "cuts"), ("exits",))
    try:
        cuts = []
        for i, c in enumerate(_list(top["cuts"], "cuts")):
            where = f"cuts[{i}]"
            c = _object(
                c, where, ("index", "flops", "activationBytes", "memoryBytes"), ("paramBytes",)
            )
            cuts.append(
                CutPoint(
                    int(_number(c, "index", where, integer=True)),
                    _number(c, "flops", where),
                    int(_number(c, "activationBytes", where, integer=True)),
                    int(_number(c, "memoryBytes", where, integer=True)),
                    None
                    if "paramBytes" not in c
                    else int(_number(c, "paramBytes", where, integer=True)),
                )
            )
        exits = []
        for i, e in enumerate(_list(top.get("exits", []), "exits")):
            where = f"exits[{i}]"
            e = _object(e, where, ("name", "cut", "accuracy"), ("thresholds",))
            if not isinstance(e["name"], str):
                raise ProfileError(f"{where}.name: must be a string, got {e['name']!r}")
            points = []
            for k, h in enumerate(_list(e.get("thresholds", []), f"{where}.thresholds")):
                at = f"{where}.thresholds[{k}]"
                h = _object(h, at, ("threshold", "hardFraction", "easyAccuracy"))
                points.append(
                    HemPoint(
                        _number(h, "threshold", at),
                        _number(h, "hardFraction", at),
                        _number(h, "easyAccuracy", at),
                    )
                )
            exits.append(
                ExitPoint(
                    e["name"],
                    int(_number(e, "cut", where, integer=True)),
                    _number(e, "accuracy", where),
                    tuple(points),
                )
            )
        return ModelProfile(
            name,
            tuple(cuts),
            tuple(exits),
            _number(top, "groundAccuracy", "profile"),
            int(_number(top, "modelBytes", "profile", integer=True)),
        )
    except ProfileError:
        raise
    except ValueError as exc:  # the profile classes' own range checks name the field
        raise ProfileError(str(exc)) from None


def node_profile(name: str, spec: Mapping[str, Any]) -> NodeProfile | None:
    """The planner's view of a ``SatelliteProfile`` spec; None without ``memoryBytes`` or
    ``flopsPerSecond`` (nothing to plan with); ProfileError for a value out of range."""
    if spec.get("memoryBytes") is None or spec.get("flopsPerSecond") is None:
        return None
    where = f"SatelliteProfile {name} spec"
    power = spec.get("power") or {}
    devices = [d for d in spec.get("devices") or [] if isinstance(d, Mapping)]

    def opt(obj: Mapping[str, Any], key: str, default: float, at: str) -> float:
        return default if obj.get(key) is None else _number(obj, key, at)

    harvest = opt(power, "harvestWatts", _HARVEST_W, f"{where}.power")
    eclipse = opt(power, "eclipseFraction", _ECLIPSE, f"{where}.power")
    try:
        return NodeProfile(
            name=name,
            memory_bytes=int(_number(spec, "memoryBytes", where, integer=True)),
            flops_per_s=_number(spec, "flopsPerSecond", where),
            compute_power_w=sum(opt(d, "busyWatts", 0.0, f"{where}.devices") for d in devices),
            idle_power_w=sum(opt(d, "idleWatts", 0.0, f"{where}.devices") for d in devices),
            # harvest only while sunlit: the share of the day outside eclipse
            harvest_wh_per_day=harvest * 24 * (1 - eclipse),
            baseline_wh_per_day=opt(power, "baselineWatts", _BASELINE_W, f"{where}.power") * 24,
            battery_wh=opt(power, "batteryWh", 0.0, f"{where}.power"),
            soc_floor=opt(power, "socFloor", 0.0, f"{where}.power"),
            storage_bytes=int(opt(spec, "storageQuotaBytes", 0.0, where)),
        )
    except ProfileError:
        raise
    except ValueError as exc:
        raise ProfileError(str(exc)) from None


def link_budget(
    node: str,
    plans: Iterable[Mapping[str, Any]],
    stations: Iterable[Mapping[str, Any]],
    link: Mapping[str, Any] | None = None,
) -> LinkBudget | None:
    """The daily link budget of ``node`` from the windows of its ContactPlans (given, or
    computed from an orbit and published in the plan's status), less the acquisition (the
    profile's ``link.acquisitionSeconds``, else each plan's) and the profile's ``link``
    losses; None if it has no windows.
    ProfileError when a plan's windows do not parse."""
    link = link or {}
    by_name = {str(_meta(s).get("name")): s.get("spec") or {} for s in stations}
    try:
        loss = float(link.get("frameErrorRate") or 0.0)
        # Aborted passes carry about nothing.
        efficiency = 1.0 - float(link.get("abortProbability") or 0.0)
        acquisition_s = link.get("acquisitionSeconds")
        if not 0 <= loss < 1:
            raise ValueError(f"frameErrorRate must be in [0, 1), not {loss}")
        if not 0 <= efficiency <= 1:
            raise ValueError(f"abortProbability must be in [0, 1], not {1 - efficiency}")
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"SatelliteProfile {node} link: {exc}") from None
    down = up = 0.0
    starts: list[float] = []
    for plan in plans:
        spec = plan.get("spec") or {}
        if spec.get("nodeName") != node:
            continue
        if not spec.get("windows"):
            # An orbit plan: the windows its controller computed, published in its status.
            computed = (plan.get("status") or {}).get("windows")
            if not computed:
                continue
            spec = {**spec, "windows": computed}
        windows, problems = parse_windows(spec, by_name)
        if problems:
            raise ProfileError(f"ContactPlan {_meta(plan).get('name')}: {'; '.join(problems)}")
        contacts = [
            Contact(
                w.start,
                w.end,
                node,
                w.station,
                float(_RATE_DOWN if w.rate_down is None else w.rate_down),
                float(_RATE_UP if w.rate_up is None else w.rate_up),
            )
            for w in windows
        ]
        if not contacts:
            continue
        starts += [c.start for c in contacts]
        if efficiency <= 0:
            continue  # every pass aborts: windows, but no bytes (a zero budget, not none)
        acquisition = (
            acquisition_s if acquisition_s is not None else spec.get("acquisitionSeconds", 60)
        )
        try:
            total = LinkBudget.from_plan(
                ContactPlan(contacts), node, days=1.0, acquisition_s=float(acquisition),
                loss=loss, efficiency=efficiency,
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise ProfileError(f"ContactPlan for {node}: {exc}") from None
        down += total.downlink_bytes_per_day
        up += total.uplink_bytes_per_day
    if not starts:
        return None
    starts.sort()
    # n passes cover n mean spacings (the last one's period runs on past the plan's end)
    span = (starts[-1] - starts[0]) * len(starts) / (len(starts) - 1) if len(starts) > 1 else 0
    days = max(1.0, span / DAY)
    return LinkBudget(down / days, up / days)


def job_of(service: Mapping[str, Any], model: ModelProfile) -> Job | None:
    """The planner's job for a JointInferenceService; None when an annotation it needs is
    absent; ProfileError when one is not a number."""
    annotations = _meta(service).get("annotations") or {}
    if any(annotations.get(k) is None for k in (FRAMES_PER_DAY, FRAME_BYTES, DEADLINE_SECONDS)):
        return None

    def number(key: str) -> float:
        try:
            value = float(annotations[key])
        except (TypeError, ValueError):
            raise ProfileError(f"annotation {key}: not a number: {annotations[key]!r}") from None
        if not math.isfinite(value):
            raise ProfileError(f"annotation {key}: not a finite number: {annotations[key]!r}")
        return value

    m = _meta(service)
    try:
        return Job(
            name=f"{m.get('namespace') or 'default'}/{m.get('name')}",
            model=model,
            frames_per_day=number(FRAMES_PER_DAY),
            frame_bytes=int(number(FRAME_BYTES)),
            deadline_s=number(DEADLINE_SECONDS),
            result_bytes=int(number(RESULT_BYTES)) if RESULT_BYTES in annotations else 1024,
        )
    except ProfileError:
        raise
    except ValueError as exc:
        raise ProfileError(str(exc)) from None


def _hem_env(service: Mapping[str, Any], threshold: float) -> dict[str, str]:
    """HEM_NAME and HEM_PARAMETERS that mark frames below ``threshold`` hard: the spec's own
    filter with its threshold set, or CrossEntropy when that filter has no single threshold."""
    hem = ((service.get("spec") or {}).get("edgeWorker") or {}).get("hardExampleMining") or {}
    name = str(hem.get("name") or "")
    value = f"{threshold:g}"
    if name in _THRESHOLD_PARAMETER:
        key = _THRESHOLD_PARAMETER[name]
        kept = [p for p in hem.get("parameters") or [] if isinstance(p, Mapping)]
        params = [dict(p) for p in kept if p.get("key") != key] + [{"key": key, "value": value}]
    else:
        name, params = "CrossEntropy", [{"key": "threshold_cross_entropy", "value": value}]
    return {"HEM_NAME": name, "HEM_PARAMETERS": json.dumps(params, separators=(",", ":"))}


def advice_for(service: Mapping[str, Any], choice: Option, reason: str) -> Advice:
    """The planner's ``choice`` (and its ``reason``) as advice for the edge worker."""
    prefix = f"{choice.label}: "
    why = reason.removeprefix(prefix)
    if choice.kind == "skip":
        return Advice(False, why, option=choice.label)
    everything_down = {"HEM_NAME": "CloudOnly", "HEM_PARAMETERS": "[]"}
    env: dict[str, str] = {"PLACEMENT_OPTION": choice.kind}
    if choice.kind == "raw":
        # mined before inference: the board only forwards frames
        env |= everything_down | {"MINING_MODE": "mining-then-inference"}
    elif choice.kind == "split":
        env |= everything_down | {"CUT_POINT": str(choice.cut)}
    elif choice.threshold is None:
        env |= {"EXIT_NAME": str(choice.exit), "CUT_POINT": str(choice.cut)}
        env |= {"HEM_NAME": "EdgeOnly", "HEM_PARAMETERS": "[]"}
    else:
        env |= {"EXIT_NAME": str(choice.exit), "CUT_POINT": str(choice.cut)}
        env |= {"HEM_THRESHOLD": f"{choice.threshold:g}"} | _hem_env(service, choice.threshold)
    return Advice(True, why, env, choice.label)


def advise(
    service: Mapping[str, Any],
    node: str,
    *,
    profile: Mapping[str, Any] | None,
    plans: Iterable[Mapping[str, Any]],
    stations: Iterable[Mapping[str, Any]],
    model: Mapping[str, Any] | None,
    neighbours: Iterable[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = (),
) -> Advice | None:
    """The advice for ``service``'s edge worker on ``node`` from the objects themselves:
    ``profile`` (the node's SatelliteProfile, None: not a satellite), the ContactPlans and
    GroundStations, and the edge Model. ``neighbours``: the other services (with their edge
    Models) whose edge workers the node runs; the planner places them all at once, since they
    share its memory, energy and downlink, and this service gets its part of that plan."""
    if profile is None:
        return None
    model_name = str(_meta(model).get("name") or "")
    text = (_meta(model).get("annotations") or {}).get(PROFILE_ANNOTATION)
    try:
        spec = profile.get("spec") or {}
        node_prof = node_profile(node, spec)
        if node_prof is None:
            why = f"SatelliteProfile {node} lacks memoryBytes or flopsPerSecond"
            return Advice(True, f"{NOT_CONSULTED} ({why})")
        budget = link_budget(node, plans, stations, spec.get("link"))
        if budget is None:
            return Advice(True, f"{NOT_CONSULTED} (no ContactPlan windows for {node})")
        if text is None:
            return Advice(True, f"{NOT_CONSULTED} (Model {model_name} has no {PROFILE_ANNOTATION})")
        try:
            model_prof = model_profile(model_name or "model", str(text))
        except ProfileError as exc:
            raise ProfileError(
                f"Model {model_name} annotation {PROFILE_ANNOTATION}: {exc}"
            ) from None
        job = job_of(service, model_prof)
        if job is None:
            wanted = f"{FRAMES_PER_DAY}, {FRAME_BYTES} and {DEADLINE_SECONDS}"
            return Advice(True, f"{NOT_CONSULTED} (the service needs annotations {wanted})")
    except ProfileError as exc:
        return Advice(False, f"invalid placement input: {exc}")
    # In name order: whichever service asks, the node's plan is the same one.
    jobs = sorted([job, *_neighbour_jobs(neighbours, skip=job.name)], key=lambda j: j.name)
    if len(jobs) > MAX_JOBS:
        why = f"{len(jobs)} profiled services on {node}, more than the {MAX_JOBS} planned at once"
        return Advice(True, f"{NOT_CONSULTED} ({why})")
    plan = plan_placement(jobs, node_prof, budget)
    return advice_for(service, plan.choices[job.name], plan.reasons[job.name])


def _neighbour_jobs(
    neighbours: Iterable[tuple[Mapping[str, Any], Mapping[str, Any] | None]], *, skip: str
) -> list[Job]:
    """The planner's jobs for the node's other services; one that is not profiled (or not
    well) is left out here: its own look reports it."""
    jobs: list[Job] = []
    for other, other_model in neighbours:
        text = (_meta(other_model).get("annotations") or {}).get(PROFILE_ANNOTATION)
        if text is None:
            continue
        try:
            name = str(_meta(other_model).get("name") or "model")
            other_job = job_of(other, model_profile(name, str(text)))
        except ProfileError:
            continue
        if other_job is not None and other_job.name != skip:
            jobs.append(other_job)
    return jobs


async def _get(client: Client, res: Any, name: str, ns: str | None = None) -> dict[str, Any] | None:
    try:
        return await client.get(res, name, ns)
    except NotFoundError:
        return None


async def satellite_advisor(
    client: Client, service: dict[str, Any], node: str, role: str
) -> Advice | None:
    """A ``PlacementAdvisor`` for ``orbiter.collab.globalmanager.controllers(advisor=...)``:
    an opinion on edge workers bound for a Node that has a SatelliteProfile, None otherwise."""
    if role != "edge":
        return None  # the planner places the on-board model; the cloud worker is on the ground
    profile = await _get(client, SATELLITE_PROFILES, node)
    if profile is None:
        return None
    plans = [
        p
        for p in (await client.list(CONTACT_PLANS))["items"]
        if (p.get("spec") or {}).get("nodeName") == node
    ]
    stations = (await client.list(GROUND_STATIONS))["items"] if plans else []
    model = await _edge_model(client, service)
    neighbours = []
    for other in (await client.list(JOINT_INFERENCE_SERVICES))["items"]:
        if _edge_node(other) == node and _meta(other).get("uid") != _meta(service).get("uid"):
            neighbours.append((other, await _edge_model(client, other)))
    # An exact search on the controller's event loop would stall the whole cloud: a thread.
    return await asyncio.to_thread(
        functools.partial(
            advise,
            service,
            node,
            profile=profile,
            plans=plans,
            stations=stations,
            model=model,
            neighbours=neighbours,
        )
    )


def _edge_node(service: Mapping[str, Any]) -> str | None:
    """The node a service's edge worker is pinned to (its template's ``nodeName``)."""
    edge = (service.get("spec") or {}).get("edgeWorker") or {}
    node = ((edge.get("template") or {}).get("spec") or {}).get("nodeName")
    return node if isinstance(node, str) and node else None


async def _edge_model(client: Client, service: Mapping[str, Any]) -> dict[str, Any] | None:
    edge = (service.get("spec") or {}).get("edgeWorker") or {}
    model_name = str((edge.get("model") or {}).get("name") or "")
    ns = _meta(service).get("namespace") or "default"
    return await _get(client, MODELS, model_name, ns) if model_name else None
