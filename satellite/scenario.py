"""Scenario files for ``orbiter satellite simulate``: constellation, link, power, workloads.

YAML or JSON with camelCase keys, every one optional (defaults are the baseline of
satellite.md §5.2). Errors name the offending key, e.g. ``link.frameErrorRate must be a number
in [0, 1)``, and a key that nothing reads is refused (``unknown key 'link.acquisitonSeconds'
(did you mean 'acquisitionSeconds'?)``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .contacts import ContactPlan, synthetic_plan
from .link import GilbertElliott, LinkConfig
from .power import PowerConfig

__all__ = ["ModelUpdate", "Scenario", "ScenarioError", "Workload", "load_scenario"]


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the key."""


@dataclass(frozen=True)
class ModelUpdate:
    at: float  # seconds from the start
    size_bytes: int
    name: str = "model"


@dataclass(frozen=True)
class Workload:
    status_keys: int = 10
    status_interval: float = 60.0
    status_bytes: int = 1024
    frame_interval: float = 30.0  # seconds between camera frames (0: no frames)
    frame_bytes: int = 786_432  # 512x512x3
    hard_fraction: float = 0.1  # kept by HEM and queued for downlink as bulk
    result_bytes: int = 1024
    inference_s: float = 20.0  # a Pi busy 2/3 of the time: ~21 % of energy, as BUPT-1's
    device: str = "pi4b"
    backlog_bytes: int = 0  # bulk already queued at the start
    models: tuple[ModelUpdate, ...] = ()
    result_ttl: float | None = None
    bulk_ttl: float | None = None


@dataclass(frozen=True)
class Scenario:
    name: str = "baseline"
    days: float = 7.0
    seed: int = 0
    satellites: tuple[str, ...] = ("sat-0",)
    passes_per_day: int = 6
    pass_seconds: float = 480.0
    rate_down: float = 50e6
    rate_up: float = 1e6
    stagger: float = 600.0  # each further satellite's passes start this much later
    plan: ContactPlan | None = None  # from a plan file instead of the synthetic one
    link: LinkConfig = field(default_factory=lambda: _baseline_link())
    power: PowerConfig = field(default_factory=PowerConfig)
    workload: Workload = field(default_factory=Workload)
    quota_bytes: int | None = 64 * 1024**3
    reserved_share: float = 0.10
    crashes: int = 0  # hub kills at random events
    corrupt_probability: float = 0.0  # chunks damaged in transit (envelope CRC still valid)
    tick: float = 1.0

    def contact_plan(self) -> ContactPlan:
        """The plan for the run plus a day of drain, so the last reports get down."""
        if self.plan is not None:
            return self.plan
        return synthetic_plan(
            self.satellites,
            passes_per_day=self.passes_per_day,
            duration=self.pass_seconds,
            days=self.days + 1,
            rate_down=self.rate_down,
            rate_up=self.rate_up,
            stagger=self.stagger,
        )


def _baseline_link() -> LinkConfig:
    """The baseline's link rules, with the rates left to the contact plan."""
    return dataclasses.replace(LinkConfig.baseline(), rate_down=None, rate_up=None)


_NAME = re.compile(r"^[A-Za-z0-9._-]{1,63}$")


def _device(value: Any) -> str:
    known = sorted(PowerConfig().devices)
    if value not in known:
        raise ScenarioError(f"workload.device must be one of {known}, not {value!r}")
    return str(value)


def load_scenario(path: str | Path) -> Scenario:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not YAML: {exc}") from None
    return scenario_from_data(data or {}, base=Path(path).parent)


def scenario_from_data(data: Any, *, base: Path | None = None) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError("a scenario must be a mapping")
    r = _Reader(data, "")
    sats = r.get("satellites", 1)
    if isinstance(sats, int) and not isinstance(sats, bool) and 1 <= sats <= 10_000:
        names = tuple(f"sat-{i}" for i in range(sats))
    elif (
        isinstance(sats, list)
        and sats
        and all(isinstance(s, str) and _NAME.match(s) and s not in (".", "..") for s in sats)
        and len(set(sats)) == len(sats)
    ):
        # Each name is a directory of the run's stores: unique, and no path in it.
        names = tuple(sats)
    else:
        raise ScenarioError(
            "satellites must be a count (1-10000) or a list of distinct names of letters, "
            "digits, '.', '_' or '-'"
        )
    plan = None
    plan_data = r.section("plan")
    plan_file = plan_data.get("file")
    if plan_file is not None:
        from .planfiles import load_plan

        plan_path = Path(str(plan_file))
        plan = load_plan(plan_path if plan_path.is_absolute() else (base or Path()) / plan_path)
    link = r.section("link")
    fer = link.number("frameErrorRate", 0.01, 0, 0.5)
    burst = link.number("meanBurstFrames", 20.0, 1, 1e6)
    # Bursts need a good state cleaner than the mean; below that, losses are independent.
    loss = (
        GilbertElliott.from_mean(fer, mean_burst_frames=burst)
        if fer >= 0.005
        else (GilbertElliott.bernoulli(fer))
    )
    power = r.section("power")
    work = r.section("workload")
    models = []
    for i, item in enumerate(work.list("models")):
        m = r.item(item, f"workload.models[{i}]")
        models.append(
            ModelUpdate(
                at=m.number("atHours", 1.0, 0, 1e6) * 3600,
                size_bytes=int(m.number("megabytes", 20, 0, 256) * 1e6),  # made in memory
                name=str(m.get("name", f"model-{i}")),
            )
        )
    scenario = Scenario(
        name=str(r.get("name", "scenario")),
        days=r.number("days", 7.0, 0.01, 3650),
        seed=int(r.number("seed", 0, 0, 2**31)),
        satellites=names,
        passes_per_day=int(plan_data.number("passesPerDay", 6, 1, 100)),
        pass_seconds=plan_data.number("passSeconds", 480.0, 1, 5000),
        rate_down=plan_data.number("rateDown", 50e6, 1, 1e12),
        rate_up=plan_data.number("rateUp", 1e6, 1, 1e12),
        stagger=plan_data.number("staggerSeconds", 600.0, 0, 86400),
        plan=plan,
        link=LinkConfig(
            acquisition_s=link.number("acquisitionSeconds", 60.0, 0, 3600),
            loss=loss,
            abort_probability=link.number("abortProbability", 0.05, 0, 1),
            stall_probability=link.number("stallProbability", 0.0, 0, 1),
            stall_s=link.number("stallSeconds", 30.0, 0, 3600),
        ),
        power=PowerConfig(
            battery_wh=power.number("batteryWh", 230.0, 0.001, 1e6),
            soc_start=power.number("socStart", 0.8, 0, 1),
            soc_floor=power.number("socFloor", 0.3, 0, 0.999),
            harvest_w=power.number("harvestWatts", 23.0, 0, 1e5),
            baseline_w=power.number("baselineWatts", 11.5, 0, 1e5),
            eclipse_fraction=power.number("eclipseFraction", 0.36, 0, 1),
        ),
        workload=Workload(
            status_keys=int(work.number("statusKeys", 10, 0, 100_000)),
            status_interval=work.number("statusIntervalSeconds", 60.0, 1, 86400),
            frame_interval=work.number("frameIntervalSeconds", 30.0, 0, 86400),
            frame_bytes=int(work.number("frameBytes", 786_432, 1, 1e10)),
            hard_fraction=work.number("hardFraction", 0.1, 0, 1),
            inference_s=work.number("inferenceSeconds", 20.0, 0, 86400),
            device=_device(work.get("device", "pi4b")),
            backlog_bytes=int(work.number("backlogBytes", 0, 0, 1e13)),
            models=tuple(models),
        ),
        quota_bytes=int(r.number("storageQuotaBytes", 64 * 1024**3, 1, 1e15)),
        reserved_share=r.number("reservedShare", 0.10, 0, 0.99),
        crashes=int(r.number("crashes", 0, 0, 100_000)),
        corrupt_probability=r.number("corruptProbability", 0.0, 0, 1),
    )
    r.refuse_unknown()
    return scenario


class _Reader:
    """One mapping of the scenario; it remembers the keys read, so that the rest, which
    would be ignored, can be refused (a typo must not silently run the default)."""

    def __init__(self, data: Any, where: str, readers: list[_Reader] | None = None) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"{where or 'scenario'} must be a mapping")
        self.data = data
        self.where = where
        self.read: set[str] = set()
        self.readers = [] if readers is None else readers
        self.readers.append(self)

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.data.get(key, default)

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{self._name(key)} must be a number, not {value!r}")
        if not lo <= value <= hi:
            raise ScenarioError(f"{self._name(key)} must be in [{lo}, {hi}], not {value}")
        return float(value)

    def section(self, key: str) -> _Reader:
        return _Reader(self.get(key) or {}, self._name(key), self.readers)

    def list(self, key: str) -> list[Any]:
        value = self.get(key) or []
        if not isinstance(value, list):
            raise ScenarioError(f"{self._name(key)} must be a list")
        return value

    def item(self, value: Any, where: str) -> _Reader:
        return _Reader(value, where, self.readers)

    def refuse_unknown(self) -> None:
        """ScenarioError naming the first key no reader read, with the closest known one."""
        for reader in self.readers:
            for key in reader.data:
                if key not in reader.read:
                    near = difflib.get_close_matches(str(key), sorted(reader.read), n=1)
                    hint = f" (did you mean {near[0]!r}?)" if near else ""
                    raise ScenarioError(f"unknown key {reader._name(str(key))!r}{hint}")
