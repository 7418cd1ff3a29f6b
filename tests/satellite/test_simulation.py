"""The store-and-forward rules over the baseline of satellite.md §5.2, on virtual time.

Each run is the production sync engine (spool, receipts, transfers) between a satellite and
its ground peer, 7 simulated days; the checks are the acceptance goals of §5.4, computed by
``metrics.measure`` from what the ground applied and the satellite generated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from orbiter.satellite.metrics import SatelliteMetrics, measure, summary
from orbiter.satellite.power import PowerConfig
from orbiter.satellite.scenario import ModelUpdate, Scenario, Workload
from orbiter.satellite.simulation import Simulation

BASELINE = Scenario(
    workload=Workload(
        backlog_bytes=10**9,  # 1 GB of bulk already queued: results must still go first
        models=(
            ModelUpdate(3600.0, 20_000_000, "m20"),
            ModelUpdate(30 * 3600.0, 100_000_000, "m100"),
        ),
    )
)


def run(scenario: Scenario, tmp_path: Path) -> tuple[list[SatelliteMetrics], dict[str, object]]:
    with Simulation(scenario, directory=tmp_path / f"sim-{scenario.seed}") as sim:
        metrics = [measure(r) for r in sim.run()]
    return metrics, summary(metrics)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baseline_week_meets_the_goals(seed: int, tmp_path: Path) -> None:
    (m,), total = run(dataclasses.replace(BASELINE, seed=seed), tmp_path)

    # Exactly-once status: nothing applied twice, no regression, the last version of every key.
    assert m.status_applied > 0
    assert m.duplicate_applies == 0
    assert m.regressions == 0
    assert m.keys_not_final == []
    # Staleness: on the ground by (next contact + acquisition + 1 min) -- no exceptions.
    assert m.staleness_violations == []
    assert len(m.staleness) == m.status_versions  # every version delivered or superseded
    # Priority: every result made before a pass's last minute is down in that pass, behind
    # 1 GB of bulk; and bulk still gets its reserved share whenever it competes.
    assert m.results_generated > 10_000
    assert m.results_delivered == m.results_generated
    assert m.results_duplicated == 0
    assert m.results_late == []
    assert m.bulk_share_violations == []
    assert m.bytes_down["bulk"] >= 10**9
    # Model updates: 20 MB within 2 passes, 100 MB within 4, verified against the manifest.
    by_name = {model["name"]: model for model in m.models}
    assert by_name["m20"]["verified"] and by_name["m20"]["passes"] <= 2
    assert by_name["m100"]["verified"] and by_name["m100"]["passes"] <= 4
    assert m.chunks_resent_after_ack == 0
    # ...and within what 90 % of the passes' uplink allows, plus one (the reference's K).
    assert not any(model["late"] for model in m.models)
    # Bulk: every frame spooled on board is on the ground once or still spooled.
    assert m.bulk_applied > 1000 and m.bulk_duplicated == 0 and m.bulk_lost == 0
    # Energy: never below the floor.
    assert m.soc_min >= m.soc_floor
    assert total["ok"] is True


def test_capacity_is_used_when_the_backlog_exceeds_it(tmp_path: Path) -> None:
    scenario = Scenario(
        days=2,
        workload=Workload(backlog_bytes=40 * 10**9, frame_interval=0, status_keys=2),
        quota_bytes=None,
    )
    (m,), _ = run(scenario, tmp_path)
    # Every contended, unaborted pass delivers >= 90 % of rate x (T - T_acq) x (1 - FER).
    assert len(m.capacity_ratios) >= 10
    assert min(m.capacity_ratios) >= 0.9, m.capacity_ratios
    # ...and never more than the lossless rate allows (a pass may lose less than the mean).
    assert max(m.capacity_ratios) <= 1 / (1 - 0.01)


def test_crashing_either_hub_a_hundred_times_loses_nothing_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    scenario = dataclasses.replace(BASELINE, seed=7, crashes=100)
    with Simulation(scenario, directory=tmp_path / "crashes") as sim:
        runs = sim.run()
        (m,) = [measure(r, check_staleness=False) for r in runs]
        assert len(sim.crashes) == 100
        assert m.restarts >= 50
        # Every strike struck: at once, or in the middle of the next application (on either
        # side), except one still waiting for an application when the run ended.
        waiting = sum(hub.crash_in_apply for r in runs for hub in (r.space, r.ground))
        assert m.restarts + waiting == 100
        assert {name for _, name in sim.crashes} == {"sat-0", "ground/sat-0"}
    assert m.duplicate_applies == 0
    assert m.regressions == 0
    assert m.keys_not_final == []
    assert m.results_delivered == m.results_generated
    assert m.results_duplicated == 0
    assert all(model["verified"] for model in m.models)
    assert m.chunks_resent_after_ack == 0
    assert m.bulk_duplicated == 0 and m.bulk_lost == 0


def test_corrupted_chunks_never_activate(tmp_path: Path) -> None:
    scenario = dataclasses.replace(
        BASELINE,
        days=2,
        corrupt_probability=0.05,
        workload=Workload(models=(ModelUpdate(600.0, 20_000_000, "m20"),)),
    )
    (m,), _ = run(scenario, tmp_path)
    assert m.corrupted_chunks > 0
    (model,) = m.models
    assert model["activated"] is not None
    assert model["verified"]  # the active blob's sha256 is the manifest's
    assert m.chunks_resent_after_ack == 0


def test_compute_is_deferred_not_dropped_and_the_floor_holds(tmp_path: Path) -> None:
    scenario = dataclasses.replace(
        BASELINE,
        days=3,
        power=PowerConfig(soc_start=0.35),
        workload=Workload(frame_interval=5.0, inference_s=4.0, status_keys=2),
    )
    (m,), _ = run(scenario, tmp_path)
    assert m.compute_deferrals > 0
    assert m.soc_min >= m.soc_floor
    # Deferred inferences still produce their results, each down in the first pass that
    # follows it (a deferred one may only be made after the run's last pass).
    assert m.results_generated > 10_000
    assert m.results_late == []
    assert m.results_delivered >= m.results_generated - 100


def test_same_seed_same_run(tmp_path: Path) -> None:
    scenario = dataclasses.replace(BASELINE, days=1, seed=3)
    _, first = run(scenario, tmp_path / "a")
    _, second = run(scenario, tmp_path / "b")
    assert first == second


def test_a_small_constellation(tmp_path: Path) -> None:
    scenario = dataclasses.replace(
        BASELINE, days=2, satellites=("sat-a", "sat-b", "sat-c"), workload=Workload(status_keys=3)
    )
    metrics, total = run(scenario, tmp_path)
    assert [m.name for m in metrics] == ["sat-a", "sat-b", "sat-c"]
    assert total["ok"] is True
    assert all(m.passes >= 10 for m in metrics)
