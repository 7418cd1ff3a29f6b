"""The placement planner: exact against brute force, and the right call under BUPT-1 budgets."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
from orbiter.satellite.contacts import synthetic_plan
from orbiter.satellite.placement import (
    Option,
    Placement,
    _candidates,
    _limits,
    _LpBound,
    brute_force,
    explain,
    options,
    plan_placement,
)
from orbiter.satellite.profiles import (
    CutPoint,
    ExitPoint,
    HemPoint,
    Job,
    LinkBudget,
    ModelProfile,
    NodeProfile,
)

MB = 10**6
GB = 10**9


def resnet() -> ModelProfile:
    """A backbone with a cheap early exit, a mid exit and the full network as the last exit."""
    cuts = (
        CutPoint(0, 0.2e9, 4 * MB, 200 * MB, 2 * MB),
        CutPoint(1, 0.6e9, 2 * MB, 400 * MB, 10 * MB),
        CutPoint(2, 2.0e9, 1 * MB, 900 * MB, 40 * MB),
        CutPoint(3, 8.0e9, 4000, 2000 * MB, 100 * MB),
    )
    early = (HemPoint(0.3, 0.02, 0.80), HemPoint(0.5, 0.05, 0.84), HemPoint(0.7, 0.12, 0.88))
    exits = (
        ExitPoint("early", 1, 0.78, early),
        ExitPoint("mid", 2, 0.86, (HemPoint(0.5, 0.04, 0.88),)),
        ExitPoint("final", 3, 0.95),
    )
    return ModelProfile("resnet", cuts, exits, 0.95, 100 * MB)


def baseline_budget() -> LinkBudget:
    return LinkBudget.from_plan(synthetic_plan(days=7), "sat-0", days=7)


def node(**changes: float) -> NodeProfile:
    return dataclasses.replace(NodeProfile.raspberry_pi_4b(), **changes)  # type: ignore[arg-type]


def test_link_budget_from_the_baseline_plan() -> None:
    b = baseline_budget()
    # 6 passes x 50 Mbit/s x (480 - 60) s x 0.99 / 8 and the same at 1 Mbit/s up
    assert b.downlink_bytes_per_day == pytest.approx(6 * 50e6 * 420 * 0.99 / 8)
    assert b.downlink_bytes_per_day == pytest.approx(15.59 * GB, rel=1e-3)
    assert b.uplink_bytes_per_day == pytest.approx(311.85 * MB, rel=1e-4)
    short = LinkBudget.from_plan(synthetic_plan(days=2, duration=50), "sat-0", days=2)
    assert short == LinkBudget(0.0, 0.0)  # every pass ends before the lock is acquired
    assert LinkBudget.from_plan(synthetic_plan(days=2), "other", days=2).downlink_bytes_per_day == 0


def test_bupt1_devices() -> None:
    pi, atlas = NodeProfile.raspberry_pi_4b(), NodeProfile.atlas_200dk()
    assert (pi.compute_power_w, pi.idle_power_w, pi.memory_bytes) == (4.8, 2.1, 8 * 1024**3)
    assert atlas.compute_power_w == 8.0 and atlas.flops_per_s > 100 * pi.flops_per_s
    # 23 Wh harvested and about 22.1 Wh used by the bus per orbit leave ~13 Wh/day for compute
    assert 10 < pi.energy_budget_wh_per_day < 20
    assert node(baseline_wh_per_day=1e4).energy_budget_wh_per_day == 0.0


def test_options_enumerate_every_choice_with_its_costs() -> None:
    job = Job("cam", resnet(), 1000, 3 * MB, 1.0)
    opts = options(job, node())
    assert [o.label for o in opts] == [
        "raw",
        *(f"split@{i}" for i in range(4)),
        "onboard(early, no offload)",
        "onboard(early, HEM<0.3)",
        "onboard(early, HEM<0.5)",
        "onboard(early, HEM<0.7)",
        "onboard(mid, no offload)",
        "onboard(mid, HEM<0.5)",
        "onboard(final, no offload)",
        "skip",
    ]
    hem = opts[7]
    assert hem.accuracy == pytest.approx(0.95 * 0.84 + 0.05 * 0.95)
    assert hem.downlink_bytes_per_day == pytest.approx(1000 * (1024 + 0.05 * 3 * MB))
    assert hem.onboard_s_per_frame == pytest.approx(0.6e9 / 13.5e9)
    assert hem.energy_wh_per_day == pytest.approx(1000 * 0.6e9 / 13.5e9 * 4.8 / 3600)
    assert (hem.memory_bytes, hem.upload_bytes) == (400 * MB, 10 * MB)
    assert opts[2].downlink_bytes_per_day == 1000 * 2 * MB  # split@1 sends the activation
    assert opts[0].energy_wh_per_day == 0 and opts[0].accuracy == 0.95


def _random_case(rng: random.Random) -> tuple[list[Job], NodeProfile, LinkBudget]:
    jobs = []
    for n in range(rng.randint(1, 3)):
        flops = mem = 0.0
        cuts = []
        for i in range(rng.randint(2, 4)):
            flops += rng.choice([0.5, 1, 2, 4]) * 1e9
            mem += rng.choice([100, 300, 600]) * MB
            act = rng.choice([0.2, 0.5, 1, 2, 4]) * MB
            cuts.append(CutPoint(i, flops, int(act), int(mem), rng.choice([None, int(mem / 4)])))
        exits = []
        for e in range(rng.randint(1, 3)):
            hems = tuple(
                HemPoint(t, rng.choice([0.02, 0.1, 0.3]), rng.choice([0.8, 0.9, 0.95]))
                for t in sorted(rng.sample([0.3, 0.5, 0.7, 0.9], rng.randint(1, 3)))
            )
            exits.append(ExitPoint(f"e{e}", rng.randrange(len(cuts)), rng.choice([0.6, 0.8]), hems))
        model = ModelProfile(
            f"m{n}", tuple(cuts), tuple(exits), rng.choice([0.9, 0.95]), rng.choice([50, 200]) * MB
        )
        fpd = rng.choice([1000, 10_000, 50_000])
        deadline = rng.choice([0.5, 1.0, 3.0])
        jobs.append(Job(f"j{n}", model, fpd, rng.choice([1, 3]) * MB, deadline, 1024, 1.0))
    raw = sum(j.frames_per_day * j.frame_bytes for j in jobs)
    most_mem = max(c.memory_bytes for j in jobs for c in j.model.cuts)
    nd = node(
        memory_bytes=int(rng.uniform(0.3, 1.2) * most_mem),
        flops_per_s=5e9,
        harvest_wh_per_day=rng.uniform(0, 60),
        baseline_wh_per_day=0.0,
    )
    budget = LinkBudget(rng.uniform(0.02, 1.0) * raw, rng.uniform(20, 400) * MB)
    return jobs, nd, budget


def _fits(choices: dict[str, Option], jobs: list[Job], nd: NodeProfile, b: LinkBudget) -> bool:
    """Every constraint, written out again independently of the planner."""
    chosen = [choices[j.name] for j in jobs]
    return (
        all(o.onboard_s_per_frame <= j.deadline_s for j, o in zip(jobs, chosen, strict=True))
        and sum(o.memory_bytes for o in chosen) <= nd.memory_bytes
        and sum(o.energy_wh_per_day for o in chosen) <= nd.energy_budget_wh_per_day * (1 + 1e-12)
        and sum(o.downlink_bytes_per_day for o in chosen) <= b.downlink_bytes_per_day * (1 + 1e-12)
        and sum(o.upload_bytes for o in chosen) <= b.uplink_bytes_per_day
        and sum(o.onboard_s_per_frame * j.frames_per_day for j, o in zip(jobs, chosen, strict=True))
        <= 86_400
    )


def _no_better_swap(p: Placement, jobs: list[Job], nd: NodeProfile, b: LinkBudget) -> None:
    """No job can move to a more valuable option that still fits beside the others' choices."""
    for j in jobs:
        mine = p.choices[j.name].accuracy
        for alt in options(j, nd):
            if alt.accuracy > mine + 1e-12 and j.weight > 0:
                assert not _fits({**p.choices, j.name: alt}, jobs, nd, b), (j.name, alt.label)


def test_branch_and_bound_equals_brute_force_on_random_cases() -> None:
    bound_binds = skipped = 0
    for seed in range(200):
        jobs, nd, budget = _random_case(random.Random(seed))
        fast, ref = plan_placement(jobs, nd, budget), brute_force(jobs, nd, budget)
        assert fast.value == ref.value, seed
        assert fast.choices == ref.choices, seed
        assert fast.reasons == ref.reasons, seed
        assert _fits(fast.choices, jobs, nd, budget), seed
        _no_better_swap(fast, jobs, nd, budget)
        unconstrained = sum(
            max(j.frames_per_day * o.accuracy for o in options(j, nd)) for j in jobs
        )
        bound_binds += fast.value < unconstrained - 1e-6
        for j in jobs:
            if fast.choices[j.name].kind == "skip":
                skipped += 1  # _no_better_swap showed nothing else fitted
    # the budgets are tight: most cases lose value to some constraint, and some skip a job
    assert bound_binds >= 120
    assert skipped >= 1


def test_lp_bound_of_one_budget() -> None:
    # (value, energy, ...): the 6-for-2 option lies under the chord from 5-for-1 to 9-for-3
    rows = [
        (v, c, 0.0, 0.0, 0.0, 0.0, i) for i, (c, v) in enumerate([(0, 0), (1, 5), (2, 6), (3, 9)])
    ]
    bound = _LpBound([rows, rows], column=1)
    assert [bound(1, room) for room in (0, 0.5, 1, 2, 3, 9)] == [0, 2.5, 5, 7, 9, 9]
    assert bound(0, 2) == 10  # two jobs each take the 5-for-1 step
    assert bound(0, 5) == 16  # then one full 4-for-2 step ...
    assert bound(0, 5.5) == 17  # ... and half of the other


def test_lp_bounds_cap_the_optimum_on_random_cases() -> None:
    for seed in range(100):
        jobs, nd, budget = _random_case(random.Random(seed))
        lim = _limits(nd, budget, 1.0)
        cands = _candidates(jobs, nd, lim)
        best = brute_force(jobs, nd, budget).value
        caps = (lim.energy, lim.downlink, lim.memory, lim.upload, lim.busy)
        for column, cap in enumerate(caps, start=1):
            assert _LpBound(cands, column)(0, cap) >= best * (1 - 1e-12), (seed, column)


def test_baseline_budget_fast_camera_goes_onboard_with_hem() -> None:
    # 3 MB every second is 259 GB/day of raw frames against ~15.6 GB/day of downlink
    job = Job("cam", resnet(), 86_400, 3 * MB, 1.0)
    p = plan_placement([job], NodeProfile.raspberry_pi_4b(), baseline_budget())
    o = p.choices["cam"]
    assert (o.kind, o.exit, o.threshold) == ("onboard", "early", 0.5)
    assert p.downlink_bytes_per_day <= baseline_budget().downlink_bytes_per_day
    why = p.reasons["cam"]
    assert "raw frames need 259.2 GB/day, the downlink carries 15.6 GB/day" in why
    assert "split@0 activations need 345.6 GB/day" in why
    assert "split@2 needs 17.1 Wh/day, the energy budget is 13.4 Wh/day" in why
    # the full network would answer as well as the ground, but eats 5x the energy budget
    assert "onboard(final, no offload) needs 68.3 Wh/day" in why
    assert p == brute_force([job], NodeProfile.raspberry_pi_4b(), baseline_budget())


def test_baseline_budget_slow_camera_sends_raw() -> None:
    job = Job("cam", resnet(), 100, 3 * MB, 1.0)
    p = plan_placement([job], NodeProfile.raspberry_pi_4b(), baseline_budget())
    assert p.choices["cam"].kind == "raw"  # as accurate as split@3 or the final exit, free on board
    assert p.reasons["cam"].startswith("raw: the ground model is the most accurate (0.950)")
    assert "300.0 MB/day of the 15.6 GB/day downlink" in p.reasons["cam"]
    assert p.value == pytest.approx(95.0)


def _mid_case() -> tuple[Job, LinkBudget]:
    """Raw frames and activations cannot go down, so the choice is between on-board exits."""
    return Job("cam", resnet(), 20_000, 3 * MB, 1.0), LinkBudget(2.5 * GB, 1 * GB)


def test_memory_excludes_an_option() -> None:
    job, b = _mid_case()
    roomy = plan_placement([job], node(), b).choices["cam"]
    assert roomy.label == "onboard(mid, HEM<0.5)"  # 2.4 GB of HEM downlink fits 2.5 GB
    tight = plan_placement([job], node(memory_bytes=800 * MB), b)
    assert tight.choices["cam"].label == "onboard(early, HEM<0.3)"
    assert "split@2 needs 900.0 MB of memory, raspberry-pi-4b has 800.0 MB" in tight.reasons["cam"]
    assert "onboard(final, no offload) needs 2.0 GB of memory" in tight.reasons["cam"]


def test_deadline_excludes_an_option() -> None:
    job, b = _mid_case()
    slow = plan_placement([dataclasses.replace(job, deadline_s=0.1)], node(), b)
    assert slow.choices["cam"].label == "onboard(early, HEM<0.3)"
    assert "needs 0.148 s per frame on board, the deadline is 0.1 s" in slow.reasons["cam"]


def test_energy_excludes_an_option() -> None:
    job, b = _mid_case()
    # the mid exit costs 20000 x 0.148 s x 4.8 W = 3.95 Wh/day, the early one 1.19 Wh/day
    poor = plan_placement([job], node(harvest_wh_per_day=3.0, baseline_wh_per_day=0.0), b)
    assert poor.choices["cam"].label == "onboard(early, HEM<0.3)"
    assert "split@2 needs 4.0 Wh/day, the energy budget is 3.0 Wh/day" in poor.reasons["cam"]
    dark = plan_placement([job], node(harvest_wh_per_day=100.0, baseline_wh_per_day=150.0), b)
    assert dark.choices["cam"].kind == "skip" and dark.energy_wh_per_day == 0


def test_skip_only_when_nothing_else_fits() -> None:
    job, _ = _mid_case()
    # not even the 1 KB results fit: 20000 x 1024 B = 20.5 MB/day
    none = plan_placement([job], node(), LinkBudget(20 * MB, 1 * GB))
    assert none.choices["cam"].kind == "skip" and none.value == 0
    assert (
        "results and hard examples need 7.2 GB/day, the downlink carries 20.0 MB"
        in none.reasons["cam"]
    )
    some = plan_placement([job], node(), LinkBudget(21 * MB, 1 * GB))
    assert some.choices["cam"].label == "onboard(mid, no offload)"


def test_upload_window_gates_model_weights() -> None:
    job, _ = _mid_case()
    b = LinkBudget(2.5 * GB, 30 * MB)  # the mid exit needs 40 MB of weights, the early one 10 MB
    assert plan_placement([job], node(), b).choices["cam"].exit == "early"
    assert plan_placement([job], node(), b, upload_days=2).choices["cam"].exit == "mid"


def test_jobs_share_the_downlink_by_weight() -> None:
    a = Job("a", resnet(), 20_000, 3 * MB, 1.0, weight=1.0)
    b = Job("b", resnet(), 20_000, 3 * MB, 1.0, weight=3.0)
    p = plan_placement([a, b], node(), LinkBudget(3 * GB, 1 * GB))
    assert p.choices["b"].label == "onboard(mid, HEM<0.5)"
    assert p.choices["a"].downlink_bytes_per_day <= 0.6 * GB
    assert "does not fit alongside the other jobs' choices (downlink)" in p.reasons["a"]
    assert p == brute_force([a, b], node(), LinkBudget(3 * GB, 1 * GB))


def _wide_model(rng: random.Random, name: str) -> ModelProfile:
    cuts = tuple(
        CutPoint(i, (i + 1) * 0.4e9, int(rng.uniform(0.1, 4) * MB), (i + 1) * 150 * MB)
        for i in range(8)
    )
    exits = tuple(
        ExitPoint(
            f"x{e}",
            2 * e + 1,
            0.6 + 0.08 * e,
            tuple(
                HemPoint(t, 0.3 - 0.25 * t, 0.7 + 0.05 * e + 0.1 * t) for t in (0.2, 0.4, 0.6, 0.8)
            ),
        )
        for e in range(4)
    )
    return ModelProfile(name, cuts, exits, 0.95, 80 * MB)


def test_six_jobs_of_thirty_options_each() -> None:
    rng = random.Random(7)
    jobs = [
        Job(f"j{k}", _wide_model(rng, f"m{k}"), rng.choice([5000, 20_000]), 3 * MB, 1.0,
            weight=rng.uniform(0.5, 2))
        for k in range(6)
    ]  # fmt: skip
    nd = node(memory_bytes=3 * GB, harvest_wh_per_day=20.0, baseline_wh_per_day=0.0)
    b = LinkBudget(6 * GB, 400 * MB)
    assert all(len(options(j, nd)) == 30 for j in jobs)
    p = plan_placement(jobs, nd, b)
    assert _fits(p.choices, jobs, nd, b)
    assert "onboard" in {o.kind for o in p.choices.values()}
    _no_better_swap(p, jobs, nd, b)
    # 30^3 combinations are still cheap for the reference
    assert plan_placement(jobs[:3], nd, b) == brute_force(jobs[:3], nd, b)
    table = explain(p)
    assert all(j.name in table for j in jobs) and "value" in table


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Job("cam", resnet(), 0, 3 * MB, 1.0), "frames_per_day"),
        (lambda: Job("cam", resnet(), 10, 3 * MB, -1.0), "deadline_s"),
        (lambda: ExitPoint("x", 0, 1.5), "accuracy"),
        (lambda: HemPoint(0.5, 1.2, 0.9), "hard_fraction"),
        (
            lambda: ModelProfile("m", (CutPoint(0, 1, 1, 1),), (ExitPoint("x", 4, 0.5),), 0.9, 1),
            "exits",
        ),
        (
            lambda: ModelProfile("m", (CutPoint(0, 2, 1, 1), CutPoint(1, 1, 1, 1)), (), 0.9, 1),
            "cuts",
        ),
        (lambda: node(flops_per_s=0.0), "flops_per_s"),
        (lambda: LinkBudget.from_plan(synthetic_plan(), "sat-0", days=0), "days"),
        (lambda: LinkBudget.from_plan(synthetic_plan(), "sat-0", days=7, loss=1.0), "loss"),
    ],
)
def test_invalid_inputs_name_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()


def test_planner_rejects_bad_arguments() -> None:
    job, b = _mid_case()
    with pytest.raises(ValueError, match="upload_days"):
        plan_placement([job], node(), b, upload_days=0)
    with pytest.raises(ValueError, match="name must be unique"):
        plan_placement([job, job], node(), b)
