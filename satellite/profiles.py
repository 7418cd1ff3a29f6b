"""What the placement planner knows: model, node, link and job profiles.

The planner (``placement.py``) is pure arithmetic over these numbers, so they live apart from it:
profiles come from measurement (per-layer FLOPs and activation sizes, per-exit accuracy, the HEM
threshold table), from the device data sheet (BUPT-1's Pi 4B and Atlas 200 DK), and from the
contact plan (the daily link budget). Every class validates itself and names the offending field,
because a wrong unit here silently yields a wrong plan.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from orbiter.satellite.contacts import DAY, ORBIT_PERIOD, ContactPlan

__all__ = [
    "ORBITS_PER_DAY",
    "CutPoint",
    "ExitPoint",
    "HemPoint",
    "Job",
    "LinkBudget",
    "ModelProfile",
    "NodeProfile",
]

ORBITS_PER_DAY = DAY / ORBIT_PERIOD  # about 15.2 at 500 km

GIB = 1024**3
# BUPT-1 energy per orbit (satellite.md §0, COTS dataset): harvest about 23 Wh; consumption about
# 28 Wh of which the computing payload is 21% on average, so the bus alone uses about 22.1 Wh.
_HARVEST_WH_PER_ORBIT = 23.0
_BUS_WH_PER_ORBIT = 28.0 * (1 - 0.21)


def _check(ok: bool, owner: str, field: str, what: str) -> None:
    if not ok:
        raise ValueError(f"{owner}: {field} {what}")


@dataclass(frozen=True, slots=True)
class CutPoint:
    """A place to split the network. ``flops`` and ``memory_bytes`` are cumulative from the input
    (what the on-board part costs), ``activation_bytes`` is the tensor crossing the cut.
    ``param_bytes`` (cumulative weights) is optional: without it the whole model is uploaded."""

    index: int
    flops: float
    activation_bytes: int
    memory_bytes: int
    param_bytes: int | None = None

    def __post_init__(self) -> None:
        owner = f"CutPoint {self.index}"
        _check(self.index >= 0, owner, "index", "must be >= 0")
        _check(self.flops >= 0, owner, "flops", "must be >= 0")
        _check(self.activation_bytes >= 0, owner, "activation_bytes", "must be >= 0")
        _check(self.memory_bytes >= 0, owner, "memory_bytes", "must be >= 0")
        _check(self.param_bytes is None or self.param_bytes >= 0, owner, "param_bytes", ">= 0")


@dataclass(frozen=True, slots=True)
class HemPoint:
    """One row of the hard-example-mining table: frames with confidence below ``threshold`` are
    hard (``hard_fraction`` of all), the rest are answered on board with ``easy_accuracy``."""

    threshold: float
    hard_fraction: float
    easy_accuracy: float

    def __post_init__(self) -> None:
        owner = f"HemPoint {self.threshold}"
        _check(0 <= self.hard_fraction <= 1, owner, "hard_fraction", "must be in [0, 1]")
        _check(0 <= self.easy_accuracy <= 1, owner, "easy_accuracy", "must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class ExitPoint:
    """A classifier head after cut ``cut_index``; ``accuracy`` when every frame exits here."""

    name: str
    cut_index: int
    accuracy: float
    thresholds: tuple[HemPoint, ...] = ()

    def __post_init__(self) -> None:
        owner = f"ExitPoint {self.name!r}"
        _check(bool(self.name), owner, "name", "must not be empty")
        _check(0 <= self.accuracy <= 1, owner, "accuracy", "must be in [0, 1]")
        values = [h.threshold for h in self.thresholds]
        _check(len(set(values)) == len(values), owner, "thresholds", "must be distinct")


@dataclass(frozen=True, slots=True)
class ModelProfile:
    name: str
    cuts: tuple[CutPoint, ...]
    exits: tuple[ExitPoint, ...]
    ground_accuracy: float
    model_bytes: int

    def __post_init__(self) -> None:
        owner = f"ModelProfile {self.name!r}"
        _check(bool(self.name), owner, "name", "must not be empty")
        _check(0 <= self.ground_accuracy <= 1, owner, "ground_accuracy", "must be in [0, 1]")
        _check(self.model_bytes >= 0, owner, "model_bytes", "must be >= 0")
        indices = [c.index for c in self.cuts]
        _check(len(set(indices)) == len(indices), owner, "cuts", "must have distinct indices")
        ordered = sorted(self.cuts, key=lambda c: c.index)
        # cumulative costs cannot shrink further into the network
        _check(
            all(a.flops <= b.flops for a, b in itertools.pairwise(ordered)),
            owner,
            "cuts",
            "flops must not decrease with the index (they are cumulative)",
        )
        names = [e.name for e in self.exits]
        _check(len(set(names)) == len(names), owner, "exits", "must have distinct names")
        for e in self.exits:
            _check(e.cut_index in indices, owner, "exits", f"{e.name!r} names unknown cut")

    def cut(self, index: int) -> CutPoint:
        for c in self.cuts:
            if c.index == index:
                return c
        raise KeyError(f"ModelProfile {self.name!r} has no cut {index}")

    def upload_bytes(self, index: int) -> int:
        """Bytes to uplink so the board can run up to cut ``index``."""
        p = self.cut(index).param_bytes
        return self.model_bytes if p is None else min(p, self.model_bytes)


@dataclass(frozen=True, slots=True)
class NodeProfile:
    """One on-board computer and the satellite's daily energy for it. ``battery_wh``,
    ``soc_floor`` and ``storage_bytes`` are carried for the power and store models; the daily
    plan only uses the steady-state budget ``harvest - baseline``."""

    name: str
    memory_bytes: int
    flops_per_s: float
    compute_power_w: float
    idle_power_w: float
    harvest_wh_per_day: float
    baseline_wh_per_day: float
    battery_wh: float
    soc_floor: float
    storage_bytes: int

    def __post_init__(self) -> None:
        owner = f"NodeProfile {self.name!r}"
        _check(self.memory_bytes >= 0, owner, "memory_bytes", "must be >= 0")
        _check(self.flops_per_s > 0, owner, "flops_per_s", "must be > 0")
        _check(self.compute_power_w >= 0, owner, "compute_power_w", "must be >= 0")
        _check(self.idle_power_w >= 0, owner, "idle_power_w", "must be >= 0")
        _check(self.harvest_wh_per_day >= 0, owner, "harvest_wh_per_day", "must be >= 0")
        _check(self.baseline_wh_per_day >= 0, owner, "baseline_wh_per_day", "must be >= 0")
        _check(self.battery_wh >= 0, owner, "battery_wh", "must be >= 0")
        _check(0 <= self.soc_floor <= 1, owner, "soc_floor", "must be in [0, 1]")
        _check(self.storage_bytes >= 0, owner, "storage_bytes", "must be >= 0")

    @property
    def energy_budget_wh_per_day(self) -> float:
        """Energy left for computing each day; a bus that already runs a deficit leaves none."""
        return max(0.0, self.harvest_wh_per_day - self.baseline_wh_per_day)

    @classmethod
    def raspberry_pi_4b(cls) -> NodeProfile:
        """BUPT-1's Pi 4B (8 GB): 4.8 W busy, 2.1 W idle as measured in orbit (satellite.md §0)."""
        return cls(
            name="raspberry-pi-4b",
            memory_bytes=8 * GIB,
            # estimate: ~13.5 GFLOPS fp32 is the HPL figure commonly reported for a cooled
            # Pi 4B at 1.5 GHz; DNN kernels rarely beat it, so it is an optimistic ceiling
            flops_per_s=13.5e9,
            compute_power_w=4.8,
            idle_power_w=2.1,
            harvest_wh_per_day=_HARVEST_WH_PER_ORBIT * ORBITS_PER_DAY,
            baseline_wh_per_day=_BUS_WH_PER_ORBIT * ORBITS_PER_DAY,
            battery_wh=230.0,
            soc_floor=0.3,
            storage_bytes=32 * 10**9,  # estimate: the microSD card's size is not published
        )

    @classmethod
    def atlas_200dk(cls) -> NodeProfile:
        """BUPT-1's Atlas 200 DK (Ascend 310): about 8 W median in orbit (satellite.md §0)."""
        return cls(
            name="atlas-200dk",
            memory_bytes=8 * GIB,  # shared by the CPU and the NPU
            # estimate: 22 TOPS int8 is the peak; 10% of it is a conservative effective rate for
            # real CNNs with pre/post-processing on the A55 cores
            flops_per_s=2.2e12,
            compute_power_w=8.0,
            idle_power_w=5.0,  # estimate: no idle figure is published for the board in orbit
            harvest_wh_per_day=_HARVEST_WH_PER_ORBIT * ORBITS_PER_DAY,
            baseline_wh_per_day=_BUS_WH_PER_ORBIT * ORBITS_PER_DAY,
            battery_wh=230.0,
            soc_floor=0.3,
            storage_bytes=32 * 10**9,  # estimate
        )


@dataclass(frozen=True, slots=True)
class LinkBudget:
    """Bytes a day that the satellite can downlink and uplink."""

    downlink_bytes_per_day: float
    uplink_bytes_per_day: float

    def __post_init__(self) -> None:
        _check(self.downlink_bytes_per_day >= 0, "LinkBudget", "downlink_bytes_per_day", ">= 0")
        _check(self.uplink_bytes_per_day >= 0, "LinkBudget", "uplink_bytes_per_day", ">= 0")

    @classmethod
    def from_plan(
        cls,
        plan: ContactPlan,
        satellite: str,
        *,
        days: float,
        acquisition_s: float = 60.0,
        loss: float = 0.01,
        efficiency: float = 1.0,
    ) -> LinkBudget:
        """Σ rate·(duration - acquisition)·(1 - loss)·efficiency/8 over the satellite's
        contacts, per direction, divided by ``days`` (satellite.md §4.2 constraint 4)."""
        _check(days > 0, "LinkBudget.from_plan", "days", "must be > 0")
        _check(acquisition_s >= 0, "LinkBudget.from_plan", "acquisition_s", "must be >= 0")
        _check(0 <= loss < 1, "LinkBudget.from_plan", "loss", "must be in [0, 1)")
        _check(0 < efficiency <= 1, "LinkBudget.from_plan", "efficiency", "must be in (0, 1]")
        down = up = 0.0
        for c in plan.for_satellite(satellite):
            # a pass shorter than the lock acquisition carries nothing
            useful = max(0.0, c.duration - acquisition_s) * (1 - loss) * efficiency / 8
            down += c.rate_down * useful
            up += c.rate_up * useful
        return cls(down / days, up / days)


@dataclass(frozen=True, slots=True)
class Job:
    """A stream of frames on the satellite and what each frame must produce."""

    name: str
    model: ModelProfile
    frames_per_day: float
    frame_bytes: int
    deadline_s: float
    result_bytes: int = 1024
    weight: float = 1.0

    def __post_init__(self) -> None:
        owner = f"Job {self.name!r}"
        _check(bool(self.name), owner, "name", "must not be empty")
        _check(self.frames_per_day > 0, owner, "frames_per_day", "must be > 0")
        _check(self.frame_bytes > 0, owner, "frame_bytes", "must be > 0")
        _check(self.deadline_s > 0, owner, "deadline_s", "must be > 0")
        _check(self.result_bytes >= 0, owner, "result_bytes", "must be >= 0")
        _check(self.weight >= 0, owner, "weight", "must be >= 0")
