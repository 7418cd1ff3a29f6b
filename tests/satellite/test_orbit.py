"""Orbit propagation and contact windows, cross-checked against skyfield (satellite.md §3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

pytest.importorskip("sgp4")
skyfield_api = pytest.importorskip("skyfield.api")

from orbiter.satellite.contacts import ContactPlan, plan_stats  # noqa: E402
from orbiter.satellite.orbit import (  # noqa: E402
    GroundStation,
    Orbit,
    compute_contacts,
    eclipse_fraction,
    parse_tles,
    sso_inclination,
    sun_synchronous,
    sunlit,
    walker,
)

EPOCH = datetime(2024, 3, 24, tzinfo=UTC)
BEIJING = (39.9042, 116.4074)
KASHGAR = (39.47, 75.99)


@pytest.fixture(scope="module")
def sso() -> Orbit:
    return sun_synchronous("sso-500", 500.0, 30.0, EPOCH)


@pytest.mark.parametrize(("altitude", "expected"), [(400, 97.0), (500, 97.4), (600, 97.8)])
def test_sso_inclination_matches_the_j2_table(altitude: float, expected: float) -> None:
    assert sso_inclination(altitude) == pytest.approx(expected, abs=0.06)


def test_sso_orbit_has_the_expected_shape(sso: Orbit) -> None:
    assert sso.inclination_deg == pytest.approx(97.40, abs=0.02)
    assert sso.raan_deg == pytest.approx(30.0)
    assert sso.period / 60 == pytest.approx(94.6, abs=0.1)
    radius = np.linalg.norm(sso.position_ecef(EPOCH.timestamp() + 3000.0))
    assert radius - 6378.137 == pytest.approx(500.0, abs=25.0)


def test_bad_inputs_are_rejected_with_names() -> None:
    with pytest.raises(ValueError, match="Nowhere: latitude 91"):
        GroundStation("Nowhere", 91.0, 0.0)
    with pytest.raises(ValueError, match="elevation mask"):
        GroundStation("Pole", 89.0, 0.0, elevation_mask_deg=90.0)
    with pytest.raises(ValueError, match="timezone-aware"):
        Orbit.from_elements("x", altitude_km=500, epoch=datetime(2024, 3, 24))
    with pytest.raises(ValueError, match="no sun-synchronous orbit"):
        sso_inclination(8000.0)


def test_tle_export_and_parse_round_trip(sso: Orbit) -> None:
    line1, line2 = sso.tle()
    assert len(line1) == len(line2) == 69
    again = Orbit.from_tle("again", line1, line2)
    assert again.tle() == (line1, line2)
    times = EPOCH.timestamp() + np.arange(0.0, 86_400.0, 600.0)
    # TLE text keeps 4 decimals of each angle: metres, not kilometres, of difference.
    drift = np.linalg.norm(again.positions_ecef(times) - sso.positions_ecef(times), axis=1)
    assert drift.max() < 1.0
    text = f"SAT A\n{line1}\n{line2}\n\n0 SAT B\n{line1}\n{line2}\n{line1}\n{line2}\n"
    orbits = parse_tles(text)
    assert [o.name for o in orbits] == ["SAT A", "SAT B", "99999"]
    assert all(o.tle() == (line1, line2) for o in orbits)


def test_positions_vectorised_equal_scalar(sso: Orbit) -> None:
    times = EPOCH.timestamp() + np.array([0.0, 1234.5, 86_399.0])
    many = sso.positions_ecef(times)
    assert many.shape == (3, 3)
    for t, row in zip(times, many, strict=True):
        assert sso.position_ecef(float(t)) == pytest.approx(row, abs=1e-9)


def _corrupt(line: str, col: int, char: str) -> str:
    return line[:col] + char + line[col + 1 :]


def test_bad_tle_lines_are_named(sso: Orbit) -> None:
    line1, line2 = sso.tle()
    good = f"A\n{line1}\n{line2}\n"
    bad_checksum = _corrupt(line2, 10, "8" if line2[10] != "8" else "9")
    with pytest.raises(ValueError, match=r"^line 6: checksum"):
        parse_tles(good + f"B\n{line1}\n{bad_checksum}\n")
    with pytest.raises(ValueError, match=r"^line 5: TLE line must be 69"):
        parse_tles(good + f"B\n{line1[:60]}\n{line2}\n")
    with pytest.raises(ValueError, match=r"^line 4: TLE line 2 without a line 1"):
        parse_tles(good + f"{line2}\n")
    with pytest.raises(ValueError, match=r"^line 4: name 'B' is not followed"):
        parse_tles(good + "B\n")
    with pytest.raises(ValueError, match=r"^line 2: expected TLE line 1"):
        parse_tles(f"A\nB\n{line2}\n")
    with pytest.raises(ValueError, match=r"^line 2: satellite number"):
        other = _corrupt(line2, 6, "8")
        Orbit.from_tle("x", line1, _corrupt(other, 68, str(_checksum(other))))


def _checksum(line: str) -> int:
    return sum(int(c) if c.isdigit() else c == "-" for c in line[:68]) % 10


def test_walker_6_2_1_planes_and_phasing() -> None:
    orbits = walker(
        "w", total=6, planes=2, phasing=1, altitude_km=550, inclination_deg=53, epoch=EPOCH
    )
    assert [o.name for o in orbits] == [f"w-{i}" for i in range(6)]
    assert [round(o.raan_deg, 6) for o in orbits] == [0, 0, 0, 180, 180, 180]
    assert [round(o.mean_anomaly_deg, 6) for o in orbits] == [0, 120, 240, 60, 180, 300]
    assert all(o.inclination_deg == pytest.approx(53.0) for o in orbits)
    with pytest.raises(ValueError, match="multiple of planes"):
        walker("w", total=7, planes=2, phasing=1, altitude_km=550, inclination_deg=53, epoch=EPOCH)


def _skyfield_passes(
    orbit: Orbit, lat: float, lon: float, mask: float, days: float
) -> list[tuple[float, float, float]]:
    """(rise, set, culmination altitude) from skyfield's own geometry."""
    ts = skyfield_api.load.timescale(builtin=True)
    sat = skyfield_api.EarthSatellite.from_satrec(orbit.satrec, ts)
    site = skyfield_api.wgs84.latlon(lat, lon)
    t0, t1 = ts.from_datetime(EPOCH), ts.from_datetime(EPOCH + timedelta(days=days))
    times, events = sat.find_events(site, t0, t1, altitude_degrees=mask)
    passes, rise, peak = [], None, 0.0
    for t, event in zip(times, events, strict=True):
        if event == 0:
            rise, peak = t.utc_datetime().timestamp(), 0.0
        elif event == 1:
            alt, _az, _d = (sat - site).at(t).altaz()
            peak = max(peak, alt.degrees)
        elif rise is not None:
            passes.append((rise, t.utc_datetime().timestamp(), peak))
            rise = None
    return passes


def test_beijing_passes_match_skyfield(sso: Orbit) -> None:
    station = GroundStation("Beijing", *BEIJING, elevation_mask_deg=10.0)
    plan = compute_contacts([sso], [station], start=EPOCH, days=7)
    reference = _skyfield_passes(sso, *BEIJING, mask=10.0, days=7)
    assert abs(len(plan) - len(reference)) <= 1
    matched = 0
    for rise, set_, peak in reference:
        c = min(plan, key=lambda c: abs(c.start - rise))
        if abs(c.start - rise) > 300:
            continue
        matched += 1
        assert c.start == pytest.approx(rise, abs=10.0)
        assert c.end == pytest.approx(set_, abs=10.0)
        assert c.duration == pytest.approx(set_ - rise, abs=10.0)
        assert c.max_elevation == pytest.approx(peak, abs=0.5)
        assert (c.satellite, c.station, c.rate_down, c.rate_up) == ("sso-500", "Beijing", 50e6, 1e6)
    assert matched >= len(reference) - 1
    stats = plan_stats(plan, "sso-500", days=7)
    assert stats.passes_per_day == pytest.approx(3.6, abs=0.2)
    assert stats.mean_duration_s / 60 == pytest.approx(5.5, abs=0.3)


def test_two_chinese_stations_leave_a_ten_hour_gap(sso: Orbit) -> None:
    stations = [GroundStation("Beijing", *BEIJING), GroundStation("Kashgar", *KASHGAR)]
    plan = compute_contacts([sso], stations, start=EPOCH, days=7)
    assert {c.station for c in plan} == {"Beijing", "Kashgar"}
    stats = plan_stats(plan, "sso-500", days=7)
    assert stats.passes_per_day == pytest.approx(7.6, abs=0.4)
    assert stats.mean_duration_s / 60 == pytest.approx(7.6, abs=0.5)
    assert stats.contact_s_per_day / 60 == pytest.approx(57.5, abs=4.0)
    assert 9 * 3600 < stats.longest_gap_s < 11 * 3600


def test_passes_in_progress_are_clipped_to_the_interval(sso: Orbit) -> None:
    station = GroundStation("Beijing", *BEIJING)
    full = compute_contacts([sso], [station], start=EPOCH, days=1)
    first = full.contacts[0]
    mid = datetime.fromtimestamp(first.start + first.duration / 2, UTC)
    second = full.contacts[1]
    days = ((second.start + second.end) / 2 - mid.timestamp()) / 86_400
    clipped = compute_contacts([sso], [station], start=mid, days=days)
    head = clipped.contacts[0]
    assert head.start == mid.timestamp()
    assert head.end == pytest.approx(first.end, abs=0.1)
    tail = clipped.contacts[-1]
    assert second.start < tail.end < second.end
    assert tail.end == pytest.approx(mid.timestamp() + days * 86_400)
    assert tail.start == pytest.approx(second.start, abs=0.1)
    # An interval wholly inside a pass has no crossing at all: the pass is the interval.
    inside = datetime.fromtimestamp(first.start + 30.0, UTC)
    (whole,) = compute_contacts([sso], [station], start=inside, days=60 / 86_400).contacts
    assert (whole.start, whole.end) == (inside.timestamp(), inside.timestamp() + 60.0)


def test_edges_are_refined_below_a_tenth_of_a_second(sso: Orbit) -> None:
    station = GroundStation("Beijing", *BEIJING, elevation_mask_deg=10.0)
    coarse = compute_contacts([sso], [station], start=EPOCH, days=2, step=20.0)
    fine = compute_contacts([sso], [station], start=EPOCH, days=2, step=2.0)
    assert len(coarse) == len(fine) > 0
    for a, b in zip(coarse, fine, strict=True):
        assert a.start == pytest.approx(b.start, abs=0.1)
        assert a.end == pytest.approx(b.end, abs=0.1)


def test_no_contacts_for_a_station_the_orbit_never_sees() -> None:
    equatorial = Orbit.from_elements("eq", altitude_km=500, inclination_deg=0.0, epoch=EPOCH)
    plan = compute_contacts(
        [equatorial], [GroundStation("Svalbard", 78.23, 15.39)], start=EPOCH, days=1
    )
    assert plan.contacts == ContactPlan().contacts


def test_eclipse_fraction_of_the_500_km_sso(sso: Orbit) -> None:
    assert eclipse_fraction(sso, EPOCH, days=2) == pytest.approx(0.36, abs=0.02)
    # One shadow entry per orbit: the shadow is a single arc, not noise.
    times = EPOCH.timestamp() + np.arange(0.0, 86_400.0, 300.0)
    lit = np.array([sunlit(sso, float(t)) for t in times])
    entries = np.count_nonzero(lit[:-1] & ~lit[1:])
    assert entries == pytest.approx(86_400 / sso.period, abs=1)


def test_eclipse_vanishes_for_a_dawn_dusk_orbit() -> None:
    # At the March equinox the Sun is near RA 3°, so a RAAN of 93° puts the orbit on the
    # terminator: a 500 km dawn-dusk SSO stays in sunlight.
    dawn_dusk = sun_synchronous("dd", 500.0, 93.0, EPOCH)
    assert eclipse_fraction(dawn_dusk, EPOCH, days=1) == 0.0
