"""`orbiter satellite simulate SCENARIO.yaml`: run a scenario and check it against §5.4.

Why a CLI: the simulator's acceptance goals (satellite.md §5.4) should be checkable by anyone
from a shell, with a table for people, JSON for scripts and an exit code for CI.

``scenario_from_data`` reads the keys it knows and ignores the rest, so a typo such as
``acquisitonSeconds`` would silently run the default. The keys are therefore checked here
first, against the table below (kept equal to what scenario.py reads by a test).

Only argparse and the standard library are imported at module level, so ``orbiter --help``
stays fast; the simulator is imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .metrics import SatelliteMetrics
    from .scenario import Scenario

__all__ = ["add_satellite_parser", "failed_checks", "run_satellite"]

_MB = 1e6


def add_satellite_parser(sub: Any) -> None:
    sat = sub.add_parser(
        "satellite",
        help="simulate satellites with pass-only links",
        description="Simulate satellites whose only link to the ground is the passes of a "
        "contact plan, over the production store-and-forward sync engine, in virtual time.",
    )
    ssub = sat.add_subparsers(dest="satellite_command", metavar="ACTION", required=True)
    sim = ssub.add_parser(
        "simulate",
        help="run a scenario file and check the acceptance goals",
        description="Run SCENARIO (YAML or JSON, camelCase keys; see "
        "deploy/examples/satellite/baseline.yaml) in virtual time and check what the ground "
        "received: status exactly once, in order and fresh; every inference result down in "
        "its pass; the bulk share; model updates verified; the battery above its floor. "
        "Prints a summary and 'ok' or 'FAILED: ...'. Exit status: 0 ok, 1 a goal failed, "
        "2 the scenario is invalid (unknown keys are refused).",
    )
    sim.add_argument("scenario", type=Path, metavar="SCENARIO", help="the scenario file")
    sim.add_argument("--days", type=float, metavar="D", help="simulated days (overrides days)")
    sim.add_argument("--seed", type=int, metavar="N", help="random seed (overrides seed)")
    sim.add_argument(
        "--satellites", type=int, metavar="N", help="number of satellites (overrides satellites)"
    )
    sim.add_argument("--png", type=Path, metavar="PATH", help="write a 4-panel plot here")
    sim.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="write the summary here, with wallSeconds and simulatedDaysPerSecond",
    )
    sim.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="keep the hubs' SQLite stores in DIR (default: a temporary dir, removed)",
    )


def run_satellite(args: argparse.Namespace) -> int:
    if args.satellite_command == "simulate":
        return simulate(args)
    return 2


def _load(args: argparse.Namespace) -> Scenario:
    import yaml

    from .scenario import ScenarioError, scenario_from_data

    path: Path = args.scenario
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None
    data = {} if data is None else data
    if isinstance(data, dict):
        overrides = {"days": args.days, "seed": args.seed, "satellites": args.satellites}
        data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return scenario_from_data(data, base=path.parent)
    except (OSError, ValueError) as exc:  # a plan file, or a config's own checks
        raise ScenarioError(str(exc)) from None


def simulate(args: argparse.Namespace) -> int:
    from .metrics import measure, summary
    from .scenario import ScenarioError
    from .simulation import Simulation

    try:
        scenario = _load(args)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        sim = Simulation(scenario, directory=args.workdir)
    except ValueError as exc:  # a --workdir holding an earlier run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with sim:
        runs = sim.run()
        metrics = [measure(run) for run in runs]
        wall = time.perf_counter() - started
        total = summary(metrics)
        total["wallSeconds"] = wall
        total["simulatedDaysPerSecond"] = scenario.days / wall if wall > 0 else None
        if args.png is not None:
            from .plotting import plot_runs

            plot_runs(runs, metrics, args.png)
    print(_table(scenario, metrics, total))
    if args.json is not None:
        args.json.write_text(json.dumps(total, indent=2) + "\n")
    failed = failed_checks(metrics)
    if not failed:
        print("ok")
        return 0
    print("FAILED: " + ", ".join(failed))
    return 1


def failed_checks(metrics: list[SatelliteMetrics]) -> list[str]:
    """The §5.4 goals some satellite missed (``SatelliteMetrics.failures``), in order."""
    failed: list[str] = []
    for m in metrics:
        failed += [name for name in m.failures() if name not in failed]
    return failed


# -- the human summary -----------------------------------------------------------------------


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / _MB:.1f} MB"


def _minutes(s: float | None) -> str:
    return "-" if s is None else f"{s / 60:.1f}"


def _column(s: dict[str, Any]) -> list[str]:
    st, res, cap, en = s["stalenessSeconds"], s["results"], s["capacityRatio"], s["energy"]
    down, chunks = s["bytesDown"], s["chunks"]
    return [
        f"{s['passes']} ({s['abortedPasses']})",
        f"{s['statusVersions']} / {s['statusApplied']} / {s['duplicateApplies']} / "
        f"{s['regressions']}",
        f"{_minutes(st['p50'])} / {_minutes(st['max'])} ({st['violations']} over bound)",
        " ".join(f"{k}:{v}" for k, v in s["passesToDeliver"].items()) or "-",
        f"{res['delivered']}/{res['generated']} ({res['late']} late)",
        ", ".join(f"{k} {_size(v)}" for k, v in down.items() if v) or "-",
        f"{chunks['sent']} / {chunks['resentAfterAck']} / {chunks['corrupted']}",
        "- (no contended pass)"
        if cap["min"] is None
        else f"{cap['min']:.3f} over {cap['passes']} passes (goal >= 0.9)",
        f"{en['socMin']:.1%} (floor {en['socFloor']:.0%}), payload {en['payloadShare']:.1%}, "
        f"{en['computeDeferrals']} deferrals",
    ]


_ROWS = [
    "passes (aborted)",
    "status versions / applied / dup / regr",
    "staleness p50 / max (minutes)",
    "passes to deliver (status)",
    "results delivered (late)",
    "bytes down",
    "model chunks sent / resent after ACK / bad",
    "capacity ratio min (contended)",
    "energy: SoC min, payload share",
]


def _model_goal(sc: Scenario, megabytes: float) -> int:
    """§5.4 goal 3: K = ceil(N / (0.9 * rate_up * (T_pass - T_acq) / 8)) + 1 passes."""
    useful = 0.9 * sc.rate_up * max(sc.pass_seconds - sc.link.acquisition_s, 1.0) / 8 / _MB
    return math.ceil(megabytes / useful) + 1


def _table(sc: Scenario, metrics: list[SatelliteMetrics], total: dict[str, Any]) -> str:
    from .metrics import summary

    if len(metrics) == 1:
        columns = [(metrics[0].name, total)]
    elif len(metrics) <= 4:
        columns = [(m.name, summary([m])) for m in metrics] + [("total", total)]
    else:
        columns = [(f"total of {len(metrics)}", total)]
    cells = [_column(s) for _, s in columns]
    head = ["", *(name for name, _ in columns)]
    rows = [head] + [[label, *(c[i] for c in cells)] for i, label in enumerate(_ROWS)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        f"{sc.name}: {len(metrics)} satellite(s), {sc.days:g} days, seed {sc.seed}",
        *("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows),
    ]
    for model in total["models"]:
        if model["activated"] is None:
            state = "not activated"
        else:
            n, goal = model["passes"], _model_goal(sc, model["megabytes"])
            state = f"{n} pass{'es' if n != 1 else ''} to activate (goal <= {goal})"
            state += ", verified" if model["verified"] else ", NOT VERIFIED"
        lines.append(
            f"model {model['satellite']}/{model['name']} {model['megabytes']:g} MB "
            f"at {model['offered'] / 3600:g} h: {state}"
        )
    rate = total["simulatedDaysPerSecond"]
    lines.append(
        f"wall time {total['wallSeconds']:.1f} s"
        + ("" if rate is None else f", {rate:.2f} simulated days per second")
    )
    return "\n".join(lines)
