"""Satellites as edge nodes: contact plans, the link between passes, power and placement::

    from orbiter.satellite import Scenario, Simulation, measure, summary, synthetic_plan

    plan = synthetic_plan("sat-0", passes_per_day=6, duration=480)   # or compute_contacts(...)
    with Simulation(Scenario(days=7)) as sim:
        print(summary([measure(run) for run in sim.run()]))

A satellite is an ordinary edge node whose link exists only in contact windows: its hub is
the same store-and-forward hub as every node's (``orbiter.orchestration.protocol``); here are
the plan (``contacts``, ``orbit`` with the ``orbit`` extra, ``planfiles``), the link model and
the real-socket ``ContactProxy`` that imposes it, the power model, the placement planner, the
simulator and the API objects (``GroundStation``, ``ContactPlan``, ``SatelliteProfile``).

Names load on first use, so ``orbiter`` on an edge node imports none of numpy or sgp4."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import EventLoop
    from .contacts import Contact, ContactPlan, PlanStats, plan_stats, synthetic_plan
    from .governing import ComputeGovernor
    from .link import GilbertElliott, LinkConfig, LinkModel, PassLink
    from .metrics import SatelliteMetrics, measure, summary
    from .orbit import GroundStation, Orbit, compute_contacts, sun_synchronous, walker
    from .placement import Option, Placement, brute_force, explain, options, plan_placement
    from .planfiles import load_plan, plan_from_data, plan_to_data
    from .power import PowerConfig, PowerModel
    from .profiles import CutPoint, ExitPoint, HemPoint, Job, LinkBudget, ModelProfile, NodeProfile
    from .proxy import ContactProxy
    from .scenario import Scenario, ScenarioError, Workload, load_scenario
    from .simulation import Simulation

_HOMES = {
    "clock": ("EventLoop",),
    "contacts": ("Contact", "ContactPlan", "PlanStats", "plan_stats", "synthetic_plan"),
    "link": ("GilbertElliott", "LinkConfig", "LinkModel", "PassLink"),
    "metrics": ("SatelliteMetrics", "measure", "summary"),
    "orbit": ("GroundStation", "Orbit", "compute_contacts", "sun_synchronous", "walker"),
    "placement": ("Option", "Placement", "brute_force", "explain", "options", "plan_placement"),
    "planfiles": ("load_plan", "plan_from_data", "plan_to_data"),
    "governing": ("ComputeGovernor",),
    "power": ("PowerConfig", "PowerModel"),
    "profiles": (
        "CutPoint",
        "ExitPoint",
        "HemPoint",
        "Job",
        "LinkBudget",
        "ModelProfile",
        "NodeProfile",
    ),
    "proxy": ("ContactProxy",),
    "scenario": ("Scenario", "ScenarioError", "Workload", "load_scenario"),
    "simulation": ("Simulation",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ComputeGovernor",
    "Contact",
    "ContactPlan",
    "ContactProxy",
    "CutPoint",
    "EventLoop",
    "ExitPoint",
    "GilbertElliott",
    "GroundStation",
    "HemPoint",
    "Job",
    "LinkBudget",
    "LinkConfig",
    "LinkModel",
    "ModelProfile",
    "NodeProfile",
    "Option",
    "Orbit",
    "PassLink",
    "Placement",
    "PlanStats",
    "PowerConfig",
    "PowerModel",
    "SatelliteMetrics",
    "Scenario",
    "ScenarioError",
    "Simulation",
    "Workload",
    "brute_force",
    "compute_contacts",
    "explain",
    "load_plan",
    "load_scenario",
    "measure",
    "options",
    "plan_from_data",
    "plan_placement",
    "plan_stats",
    "plan_to_data",
    "summary",
    "sun_synchronous",
    "synthetic_plan",
    "walker",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
