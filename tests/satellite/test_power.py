"""Power model: exact integration, floor-keeping admission and the compute governor."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable
from dataclasses import replace

import pytest
from orbiter.satellite.clock import EventLoop
from orbiter.satellite.governing import ComputeGovernor, Job
from orbiter.satellite.power import OrbitEnergy, PowerConfig, PowerModel

DAY = 86_400.0
H = 3600.0

# 100 Wh battery, 20 W sun, 10 W bus, 1-hour orbit whose first quarter is eclipse.
SMALL = PowerConfig(
    battery_wh=100.0,
    harvest_w=20.0,
    baseline_w=10.0,
    eclipse_fraction=0.25,
    orbit_period_s=3600.0,
    soc_floor=0.1,
)


def _two_orbits(model: PowerModel, step: float | None) -> None:
    events: list[tuple[float, Callable[[float], None]]] = [
        (0.0, lambda t: model.set_activity("power", "pi4b", False, at=t)),
        (600.0, lambda t: model.set_activity("job", "pi4b", True, at=t)),
        (1200.0, lambda t: model.clear_activity("job", at=t)),
        (2000.0, lambda t: model.set_comms(True, at=t)),
        (2600.0, lambda t: model.set_comms(False, at=t)),
    ]
    t = 0.0
    for at, act in events:
        while step is not None and t + step < at:
            t += step
            model.advance(t)
        act(at)
        t = at
    while step is not None and t + step < 7200.0:
        t += step
        model.advance(t)
    model.advance(7200.0)


def test_two_orbit_trace_matches_hand_computation() -> None:
    model = PowerModel(replace(SMALL, soc_start=0.97))
    _two_orbits(model, None)
    # Orbit 1: eclipse [0, 900), sun [900, 3600). Loads: bus 10 + Pi idle 2.1 = 12.1 W; Pi busy
    # (+2.7 W) over [600, 1200) straddling sunrise; radio (+12 W) over [2000, 2600).
    e = 97.0
    e -= 12.1 * 600 / H  # eclipse, idle
    e -= 14.8 * 300 / H  # eclipse, busy
    low1 = e
    e += (20 - 14.8) * 300 / H  # sun, busy
    e += (20 - 12.1) * 800 / H
    e += (20 - 24.1) * 600 / H  # sun, radio on: still draining
    e += (20 - 12.1) * 1000 / H
    end1 = e
    # Orbit 2: idle through eclipse, then the battery fills and the surplus is curtailed.
    e -= 12.1 * 900 / H
    low2 = e
    surplus = e + (20 - 12.1) * 2700 / H - 100.0
    assert surplus > 0
    o1, o2 = model.orbits()
    assert (o1.index, o1.start, o1.end, o2.start, o2.end) == (0, 0.0, 3600.0, 3600.0, 7200.0)
    expected1 = (12.1 + 2.7 * 600 / H + 12 * 600 / H, 15.0, 2.1 + 2.7 * 600 / H, 2.0)
    actual1 = (o1.consumed_wh, o1.harvested_wh, o1.payload_wh, o1.comms_wh)
    assert actual1 == pytest.approx(expected1, abs=1e-9)
    assert o1.soc_min * 100 == pytest.approx(low1, abs=1e-9)
    assert o1.soc_end * 100 == pytest.approx(end1, abs=1e-9)
    assert o1.curtailed_wh == 0.0
    assert o2.soc_min * 100 == pytest.approx(low2, abs=1e-9)
    assert o2.soc_end == 1.0
    assert o2.curtailed_wh == pytest.approx(surplus, abs=1e-9)
    assert model.curtailed_wh == pytest.approx(surplus, abs=1e-9)
    assert (o2.consumed_wh, o2.payload_wh, o2.comms_wh) == pytest.approx((12.1, 2.1, 0), abs=1e-9)
    assert o1.payload_share == pytest.approx(o1.payload_wh / o1.consumed_wh)
    # The trace has the kink where the battery filled, and interpolates between breakpoints.
    t_full = 4500 + (100.0 - low2) / (20 - 12.1) * H
    assert model.soc(t_full) == pytest.approx(1.0, abs=1e-12)
    assert model.soc(900.0) * 100 == pytest.approx(low1, abs=1e-9)
    assert model.soc(450.0) * 100 == pytest.approx(97.0 - 12.1 * 450 / H, abs=1e-9)
    # Conservation over the whole run.
    done = model.energy_wh - 97.0
    flows = sum(o.harvested_wh - o.curtailed_wh - o.consumed_wh for o in model.orbits())
    assert done == pytest.approx(flows, abs=1e-9)


def test_one_step_equals_many_small_steps() -> None:
    one = PowerModel(replace(SMALL, soc_start=0.97))
    many = PowerModel(replace(SMALL, soc_start=0.97))
    _two_orbits(one, None)
    _two_orbits(many, 37.0)
    assert many.now == one.now == 7200.0
    assert many.energy_wh == pytest.approx(one.energy_wh, abs=1e-9)
    for a, b in zip(one.orbits(), many.orbits(), strict=True):
        for name in OrbitEnergy.__dataclass_fields__:
            assert getattr(a, name) == pytest.approx(getattr(b, name), abs=1e-9), name
    assert len(many.trace()) > len(one.trace())  # the small steps really were taken


def test_can_run_and_earliest_start_are_exact() -> None:
    # 53.5 Wh at t=0 in eclipse (ends at 900 s), floor 50 Wh, Pi idle: 12.1 W, busy +2.7 W.
    cfg = replace(SMALL, soc_floor=0.5, soc_start=0.535)
    model = PowerModel(cfg)
    model.set_activity("power", "pi4b", False, at=0.0)
    # The rest of the eclipse costs 3.025 Wh idle, leaving 0.475 Wh for 2.7 W: 633.3 s.
    limit = 0.475 * H / 2.7
    assert model.can_run("pi4b", limit - 0.01, at=0.0)
    assert not model.can_run("pi4b", limit + 0.01, at=0.0)
    # A 700-s job fits once its eclipse part is at most `limit`: start 900 - limit = 266.67 s.
    start = model.earliest_start("pi4b", 700.0, after=0.0)
    assert start is not None
    assert start == pytest.approx(900.0 - limit, abs=2e-3)
    assert model.can_run("pi4b", 700.0, at=start)
    assert not model.can_run("pi4b", 700.0, at=start - 0.01)
    # The Atlas (off, so its full 8 W counts) needs more margin than the Pi.
    assert not model.can_run("atlas200dk", limit - 0.01, at=0.0)
    # A job that could never fit within the horizon gets None; the state is untouched.
    # The Atlas's 20.1 W total exceeds even the sunlit harvest, so a long run never fits.
    assert model.earliest_start("atlas200dk", 10 * H, after=0.0, horizon_s=DAY) is None
    assert model.now == 0.0
    assert model.energy_wh == pytest.approx(53.5)
    with pytest.raises(ValueError, match="unknown device"):
        model.can_run("gpu", 1.0, at=0.0)


def test_sunlit_callback_drives_the_eclipse() -> None:
    def sunlit(t: float) -> bool:
        return (t % 1000.0) >= 400.0  # eclipse for the first 400 s of every 1000 s

    cfg = replace(SMALL, eclipse_fraction=0.9, sunlit=sunlit)
    model = PowerModel(cfg)
    model.advance(3600.0)
    (orbit,) = model.orbits()
    sunlit_s = 600 + 600 + 600 + 200  # [0, 3600) in 1000-s cycles, ignoring eclipse_fraction
    assert orbit.harvested_wh == pytest.approx(20 * sunlit_s / H, abs=1e-6)
    assert model.next_sunrise(0.0) == pytest.approx(400.0, abs=1e-5)
    assert model.next_sunrise(500.0) == pytest.approx(1400.0, abs=1e-5)
    assert not model.sunlit_at(1200.0) and model.sunlit_at(1500.0)
    # The SoC falls in each eclipse and rises in each sunlit spell.
    socs = [model.soc(t) for t in (0.0, 400.0, 1000.0, 1400.0, 2000.0)]
    assert socs[1] < socs[0] and socs[2] > socs[1] and socs[3] < socs[2] and socs[4] > socs[3]


def test_week_of_jobs_never_breaches_the_floor() -> None:
    loop = EventLoop()
    cfg = PowerConfig(soc_start=0.4)  # BUPT-1 defaults, starting low so the floor binds early
    model = PowerModel(cfg)
    model.set_activity("power", "pi4b", False, at=0.0)  # the Pi stays powered, idle by default
    gov = ComputeGovernor(model, loop)
    done: list[Job] = []
    period = 120.0

    def submit() -> None:
        gov.submit(f"infer-{len(gov.submitted)}", "pi4b", 60.0, done.append)
        if loop.now + period < 7 * DAY:
            loop.call_later(period, submit)

    loop.call_at(0.0, submit)
    loop.run_until(7 * DAY)
    model.advance(7 * DAY)

    floor = cfg.soc_floor - 1e-9
    assert min(s for _, s in model.trace()) >= floor
    orbits = model.orbits()
    assert len(orbits) == math.floor(7 * DAY / cfg.orbit_period_s)
    assert min(o.soc_min for o in orbits) >= floor
    # Tight: the floor is actually reached, so the governor is what holds it.
    assert min(o.soc_min for o in orbits) < cfg.soc_floor + 0.01
    times = [t for t, _ in model.trace()]
    for job in done:
        assert job.started is not None and job.finished is not None
        lo, hi = bisect.bisect_left(times, job.started), bisect.bisect_right(times, job.finished)
        inside = [model.soc(t) for t in times[lo:hi]]
        assert min([model.soc(job.started), model.soc(job.finished), *inside]) >= floor
    # Deferred, never dropped: every submitted job ran, runs or waits, one at a time.
    assert len(gov.submitted) == 7 * DAY / period
    assert done == gov.completed
    assert len(done) + len(gov.running) + gov.pending == len(gov.submitted)
    late = [j for j in done if j.deferrals > 0]
    assert gov.deferrals > 50 and len(late) > 1000
    assert all(j.started is not None and j.started > j.submitted for j in late)
    runs = sorted((j.started or 0.0, j.finished or 0.0) for j in done)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs))
    # Demand is 50 % duty; the budget carries ~42 % once the floor binds (45 % over the week).
    busy = sum(j.duration_s for j in done) / (7 * DAY)
    assert 0.4 < busy < 0.47
    shares = [o.payload_share for o in orbits]
    mean_share = sum(shares) / len(shares)
    assert 0.2 < mean_share < 0.24  # BUPT-1: ~21 % on average
    assert model.unserved_wh == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("battery_wh", 0.0),
        ("soc_start", 1.5),
        ("soc_floor", 1.0),
        ("harvest_w", -1.0),
        ("baseline_w", math.nan),
        ("eclipse_fraction", 1.2),
        ("orbit_period_s", 0.0),
        ("eclipse_phase", 1.0),
        ("comms_w", -2.0),
        ("sunlit_scan_s", 0.0),
        ("sunlit", 3),
        ("devices", {"pi4b": (5.0, 2.0)}),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"PowerConfig.{field} "):
        PowerConfig(**{field: value})  # type: ignore[arg-type]


def test_time_only_moves_forward() -> None:
    model = PowerModel(PowerConfig(), start=100.0)
    model.advance(200.0)
    with pytest.raises(ValueError, match="already at 200"):
        model.advance(150.0)
    with pytest.raises(ValueError, match="before the model time"):
        model.can_run("pi4b", 10.0, at=150.0)
    with pytest.raises(ValueError, match="unknown device"):
        model.set_activity("x", "gpu", True, at=300.0)


def test_scheduled_comms_window_is_exact_in_the_trace() -> None:
    model = PowerModel(replace(SMALL, soc_start=0.9))
    # Eclipse [0, 900) and [3600, 4500). One window straddles sunrise, one the orbit boundary.
    model.schedule_comms([(500.0, 1000.0), (3500.0, 3700.0)])
    assert model.load_w == 10.0
    model.advance(4000.0)  # one step: the integrator switches the radio by itself
    e = 90.0
    steps = [
        (500, -10.0),  # eclipse, bus only
        (400, -22.0),  # eclipse, radio on
        (100, 20 - 22.0),  # sun, radio on: still draining
        (2500, 20 - 10.0),
        (100, 20 - 22.0),  # radio on into the orbit boundary
        (100, -22.0),  # eclipse, radio on
        (300, -10.0),
    ]
    expected = [(0.0, e / 100)]
    t = 0.0
    for dt, net in steps:
        t, e = t + dt, e + net * dt / H
        expected.append((t, e / 100))
    trace = model.trace()
    assert [x for x, _ in trace] == [x for x, _ in expected]
    assert [s for _, s in trace] == pytest.approx([s for _, s in expected], abs=1e-12)
    o1, o2 = model.orbits(partial=True)
    assert o1.comms_wh == pytest.approx(12 * 600 / H, abs=1e-12)
    assert o2.comms_wh == pytest.approx(12 * 100 / H, abs=1e-12)
    assert o1.consumed_wh == pytest.approx(10 + 12 * 600 / H, abs=1e-12)
    assert o1.payload_wh == 0.0
    # The same load through set_comms gives the same battery, step for step.
    manual = PowerModel(replace(SMALL, soc_start=0.9))
    for at, on in ((500.0, True), (1000.0, False), (3500.0, True), (3700.0, False)):
        manual.set_comms(on, at=at)
    manual.advance(4000.0)
    assert [x for x, _ in manual.trace()] == [x for x, _ in trace]
    assert [s for _, s in manual.trace()] == pytest.approx([s for _, s in trace], abs=1e-12)
    assert manual.orbits(partial=True)[0].comms_wh == pytest.approx(o1.comms_wh, abs=1e-12)


def test_schedule_comms_merges_and_ignores_the_past() -> None:
    model = PowerModel(SMALL)
    model.schedule_comms([(100.0, 200.0), (400.0, 400.0)])
    model.schedule_comms([(200.0, 300.0), (50.0, 120.0), (500.0, 600.0)])
    assert model.comms_windows == [(50.0, 300.0), (500.0, 600.0)]
    model.schedule_comms([(250.0, 550.0)])
    assert model.comms_windows == [(50.0, 600.0)]
    model.advance(1000.0)
    model.schedule_comms([(900.0, 1100.0), (10.0, 20.0)])
    assert model.comms_windows == [(50.0, 600.0), (1000.0, 1100.0)]
    assert model.load_w == 22.0  # on at the very start of a window
    drain = (22 - 20) * 100 / H  # sunlit: the radio out-draws the surplus
    assert model.soc(1100.0) == pytest.approx(model.soc(1000.0) - drain / 100, abs=1e-12)
    with pytest.raises(ValueError, match="comms window"):
        model.schedule_comms([(2000.0, 1999.0)])
    with pytest.raises(ValueError, match="comms window"):
        model.schedule_comms([(2000.0, math.inf)])


def test_job_before_a_scheduled_window_keeps_the_floor() -> None:
    # Floor 50 Wh; eclipse [0, 900); radio [800, 1400) straddles sunrise. A 800-s Pi job (off
    # when idle, so +4.8 W) from t=0 ends as the window opens: the old look-ahead, blind to the
    # window, saw 53.7 - 10 * 900/H - 4.8 * 800/H = 50.13 Wh at sunrise and admitted it.
    cfg = replace(SMALL, soc_floor=0.5, soc_start=0.537)
    model = PowerModel(cfg)
    model.schedule_comms([(800.0, 1400.0)])
    no_job_low = 53.7 - 10 * 900 / H - 12 * 100 / H - (22 - 20) * 500 / H
    assert not model.can_run("pi4b", 800.0, at=0.0)
    assert model.soc(1400.0) * 100 == pytest.approx(no_job_low, abs=1e-12)
    # The job may put (no_job_low - 50) Wh more on the battery before the window closes.
    limit = (no_job_low - 50.0) * H / 4.8
    assert model.can_run("pi4b", limit - 0.01, at=0.0)
    assert not model.can_run("pi4b", limit + 0.01, at=0.0)
    start = model.earliest_start("pi4b", 800.0, after=0.0)
    assert start == pytest.approx(1400.0 - limit, abs=2e-3)
    # Through the governor: the job waits, runs, and the floor holds through the window.
    loop = EventLoop()
    gov = ComputeGovernor(model, loop)
    job = gov.submit("j", "pi4b", 800.0)
    loop.run_until(3600.0)
    model.advance(3600.0)
    assert gov.deferrals == 1 and job.started == pytest.approx(start, abs=2e-3)
    assert job.finished == pytest.approx(start + 800.0)
    assert min(s for _, s in model.trace()) >= cfg.soc_floor - 1e-9
    assert model.soc(1400.0) == pytest.approx(cfg.soc_floor, abs=1e-4)  # tight
    assert model.orbits()[0].comms_wh == pytest.approx(12 * 600 / H, abs=1e-12)


def test_three_days_of_heavy_compute_and_passes_keep_the_floor() -> None:
    loop = EventLoop()
    cfg = PowerConfig(soc_start=0.35)  # BUPT-1 defaults, starting just above the floor
    model = PowerModel(cfg)
    days = 3
    # 6 passes a day, 7 minutes of radio each, at hours that drift against the eclipses.
    passes = [
        (d * DAY + k * 4 * H + 1000.0, d * DAY + k * 4 * H + 1420.0)
        for d in range(days)
        for k in range(6)
    ]
    model.schedule_comms(passes[:6])  # a day known up front, the rest added as it comes
    gov = ComputeGovernor(model, loop)
    period = 5.0

    def submit() -> None:
        gov.submit(f"infer-{len(gov.submitted)}", "pi4b", 4.0)
        if loop.now + period < days * DAY:
            loop.call_later(period, submit)

    for d in range(1, days):
        loop.call_at((d - 0.5) * DAY, lambda d=d: model.schedule_comms(passes[6 * d : 6 * d + 6]))
    loop.call_at(0.0, submit)
    loop.run_until(days * DAY)
    model.advance(days * DAY)

    floor = cfg.soc_floor - 1e-9
    assert min(s for _, s in model.trace()) >= floor
    assert min(o.soc_min for o in model.orbits()) < cfg.soc_floor + 0.01  # the floor binds
    comms_wh = sum(o.comms_wh for o in model.orbits(partial=True))
    assert comms_wh == pytest.approx(12 * 420 * 6 * days / H, abs=1e-9)
    assert gov.deferrals > 0
    assert len(gov.submitted) == days * DAY / period
    assert len(gov.completed) + len(gov.running) + gov.pending == len(gov.submitted)
    assert model.unserved_wh == 0.0


def test_look_ahead_covers_a_window_in_the_sunlit_spell_after_the_eclipse() -> None:
    # Radio [950, 1550) opens just after sunrise (900 s) and out-draws the sun by 2 W. An 850-s
    # job from t=0 leaves 53.77 - 2.5 - 4.8 * 850/H = 50.137 Wh at sunrise, above the 50-Wh
    # floor, but 50.137 + 10 * 50/H - 2 * 600/H = 49.94 Wh when the window closes.
    cfg = replace(SMALL, soc_floor=0.5, soc_start=0.5377)
    model = PowerModel(cfg)
    model.schedule_comms([(950.0, 1550.0)])
    assert not model.can_run("pi4b", 850.0, at=0.0)
    loop = EventLoop()
    gov = ComputeGovernor(model, loop)
    job = gov.submit("j", "pi4b", 850.0)
    loop.run_until(3600.0)
    model.advance(3600.0)
    assert job.started is not None and job.started > 0.0 and job.finished is not None
    assert min(s for _, s in model.trace()) >= cfg.soc_floor - 1e-9
