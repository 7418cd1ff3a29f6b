"""``orbiter satellite simulate`` as a user runs it: the baseline scenario file, the summary,
the JSON and the PNG; typos refused instead of silently running the defaults; and the plot
drawn in-process from a short run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from orbiter.satellite.cli import failed_checks
from orbiter.satellite.metrics import SatelliteMetrics, measure
from orbiter.satellite.plotting import plot_runs
from orbiter.satellite.scenario import ScenarioError, scenario_from_data
from orbiter.satellite.simulation import Simulation

from orbiter.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "deploy" / "examples" / "satellite" / "baseline.yaml"
ORBITER = Path(sys.executable).parent / "orbiter"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUMMARY_KEYS = {
    "ok",
    "satellites",
    "statusVersions",
    "statusApplied",
    "duplicateApplies",
    "regressions",
    "keysNotFinal",
    "stalenessSeconds",
    "passesToDeliver",
    "results",
    "bytesDown",
    "capacityRatio",
    "bulkShareViolations",
    "models",
    "energy",
    "passes",
    "abortedPasses",
    "restarts",
    "chunks",
    "wallSeconds",
    "simulatedDaysPerSecond",
}


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 500 and image.shape[1] > 500
    assert image.std() > 0.05  # drawn on, not a blank canvas


def test_baseline_two_days_as_a_process(tmp_path: Path) -> None:
    png, out = tmp_path / "out.png", tmp_path / "out.json"
    args = [BASELINE, "--days", "2", "--png", png, "--json", out]
    run = subprocess.run(
        [str(ORBITER), "satellite", "simulate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == "ok"
    assert lines[0] == "baseline: 1 satellite(s), 2 days, seed 0"
    assert any(line.startswith("results delivered (late)") for line in lines)
    _check_png(png)

    summary = json.loads(out.read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["ok"] is True
    assert summary["duplicateApplies"] == summary["regressions"] == summary["keysNotFinal"] == 0
    assert summary["results"]["late"] == 0
    assert summary["results"]["delivered"] == summary["results"]["generated"] > 5000
    assert summary["bytesDown"]["bulk"] > 1e9  # the 1 GB backlog went down
    assert [m["name"] for m in summary["models"]] == ["model-20mb", "model-100mb"]
    assert all(m["verified"] for m in summary["models"])
    assert summary["energy"]["socMin"] >= summary["energy"]["socFloor"]
    assert summary["wallSeconds"] > 0
    assert summary["simulatedDaysPerSecond"] == pytest.approx(2 / summary["wallSeconds"])


@pytest.mark.slow
def test_full_baseline_meets_the_goals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The one 7-day run: §5.4 goals 1-4 and 7 in the §5.2 baseline."""
    out = tmp_path / "out.json"
    assert main(["satellite", "simulate", str(BASELINE), "--json", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "ok"
    summary = json.loads(out.read_text())
    assert summary["statusVersions"] == 7 * 1440 * 10
    assert summary["stalenessSeconds"]["violations"] == 0
    assert summary["results"]["generated"] == 7 * 2880
    assert summary["results"]["late"] == summary["bulkShareViolations"] == 0
    passes = {m["name"]: m["passes"] for m in summary["models"]}
    assert 1 <= passes["model-20mb"] <= 2 and 1 <= passes["model-100mb"] <= 4


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["satellite", "--help"], ["satellite", "simulate", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "simulate" in text
    for flag in ("--days", "--seed", "--satellites", "--png", "--json", "--workdir"):
        assert flag in text


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["link"].update(acquisitonSeconds=30), "link.acquisitonSeconds"),
        (lambda d: d.update(dayz=2), "dayz"),
        (lambda d: d["workload"]["models"][1].update(megabyte=5), "workload.models[1].megabyte"),
    ],
)
def test_a_typo_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, key: str
) -> None:
    data = yaml.safe_load(BASELINE.read_text())
    assert callable(edit)
    edit(data)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["satellite", "simulate", str(path), "--days", "0.1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: unknown key {key!r}")
    assert len(captured.err.splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("link: {frameErrorRate: 2}", "error: link.frameErrorRate must be in"),
        ("days: [", "not YAML"),
        ("- 1", "error: a scenario must be a mapping"),
        # Names are store directories: no path, no duplicates.
        ("satellites: ['../x']", "error: satellites must be a count"),
        ("satellites: [a, a]", "error: satellites must be a count"),
        ("workload: {device: toaster}", "error: workload.device must be one of"),
        ("workload: {models: [{megabytes: 1000}]}", "megabytes must be in [0, 256]"),
    ],
)
def test_an_invalid_scenario_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["satellite", "simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert main(["satellite", "simulate", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read")


def test_baseline_file_uses_only_known_keys() -> None:
    data = yaml.safe_load(BASELINE.read_text())
    sc = scenario_from_data(data, base=BASELINE.parent)  # refuses a key it does not read
    assert (sc.days, sc.seed, sc.satellites, sc.passes_per_day) == (7, 0, ("sat-0",), 6)
    assert (sc.pass_seconds, sc.rate_down, sc.rate_up) == (480, 50e6, 1e6)
    assert (sc.link.acquisition_s, sc.link.abort_probability) == (60, 0.05)
    assert sc.link.loss.mean_loss == pytest.approx(0.01)
    assert sc.workload.backlog_bytes == 10**9
    assert [(m.at, m.size_bytes) for m in sc.workload.models] == [
        (3600, 20 * 10**6),
        (30 * 3600, 100 * 10**6),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dayz": 2}, "unknown key 'dayz' (did you mean 'days'?)"),
        ({"link": {"acquisitonSeconds": 9}}, "unknown key 'link.acquisitonSeconds'"),
        ({"plan": {"passes": 3}}, "unknown key 'plan.passes'"),
        ({"workload": {"models": [{"megabyte": 5}]}}, "'workload.models[0].megabyte'"),
    ],
)
def test_scenario_from_data_refuses_keys_it_would_ignore(
    data: dict[str, object], message: str
) -> None:
    # At the reader's depth: load_scenario and the CLI refuse typos alike.
    with pytest.raises(ScenarioError, match=re.escape(message)):
        scenario_from_data(data)


def test_plot_runs_in_process(tmp_path: Path) -> None:
    sc = scenario_from_data(
        {"days": 1, "workload": {"backlogBytes": 200_000_000, "models": [{"megabytes": 5}]}}
    )
    with Simulation(sc, directory=tmp_path / "work") as sim:
        runs = sim.run()
        metrics = [measure(run) for run in runs]
        plot_runs(runs, metrics, tmp_path / "plot.png")
    _check_png(tmp_path / "plot.png")
    delays = metrics[0].status_delays  # what the plot shows: one (made, delay) per version
    assert len(delays) == len(metrics[0].staleness) > 0
    assert min(d for _, d in delays) >= 0
    assert metrics[0].models[0]["verified"]


@pytest.mark.parametrize(
    ("field", "value", "check"),
    [
        ("duplicate_applies", 1, "duplicate status applies"),
        ("regressions", 2, "status regressions"),
        ("keys_not_final", ["status/x/0"], "keys not final"),
        ("results_late", [{"frame": 1}], "results late"),
        ("soc_min", 0.1, "SoC below floor"),
        ("chunks_resent_after_ack", 3, "chunks resent after ACK"),
        ("staleness_violations", [{"key": "k"}], "staleness bound"),
        ("results_duplicated", 1, "duplicate results"),
        ("bulk_share_violations", [{"pass": 1}], "bulk share"),
        ("bulk_duplicated", 1, "duplicate bulk"),
        ("bulk_lost", 2, "bulk lost"),
        ("models", [{"verified": False, "activated": 5.0, "late": False}], "model not verified"),
        ("models", [{"verified": False, "activated": None, "late": True}], "model late"),
    ],
)
def test_failed_checks_name_what_ok_rejects(field: str, value: object, check: str) -> None:
    good = SatelliteMetrics("sat-0", soc_min=0.5, soc_floor=0.3)
    assert good.ok and failed_checks([good]) == []
    bad = SatelliteMetrics("sat-1", soc_min=0.5, soc_floor=0.3)
    setattr(bad, field, value)
    assert not bad.ok
    assert failed_checks([good, bad]) == [check]


def test_a_workdir_with_an_earlier_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    args = ["satellite", "simulate", str(BASELINE), "--days", "0.05", "--workdir", str(work)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2  # its rows would be counted in the second run's checks
    assert "is not empty" in capsys.readouterr().err
