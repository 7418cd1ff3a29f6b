"""Contact plan files (data and ION text) and the merged-contact statistics."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from orbiter.satellite.contacts import Contact, ContactPlan, plan_stats, synthetic_plan
from orbiter.satellite.planfiles import dump_ion, load_ion, load_plan, plan_from_data, plan_to_data


def _plan() -> ContactPlan:
    plan = synthetic_plan(["sat-a", "sat-b"], passes_per_day=4, days=2, stagger=123.25)
    odd = Contact(1711238400.125, 1711238880.5, "sat-c", "kashgar", 12.5e6, 0.0, 31.7)
    return ContactPlan([*plan, odd])


def test_data_round_trip_through_json_is_exact() -> None:
    plan = _plan()
    again = plan_from_data(json.loads(json.dumps(plan_to_data(plan))))
    assert again.contacts == plan.contacts


def test_rfc3339_times_become_unix_seconds() -> None:
    window: dict[str, Any] = {"start": "2024-03-24T00:00:00Z", "end": "2024-03-24T08:10:00+08:00"}
    window |= {"satellite": "s", "station": "g", "rateDown": 8e6, "rateUp": 1e6}
    (c,) = plan_from_data([window]).contacts
    assert (c.start, c.end) == (1711238400.0, 1711238400.0 + 600.0)
    assert c.max_elevation == 0.0


def _window(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"start": 0, "end": 480, "satellite": "s", "station": "g"}
    base |= {"rateDown": 50e6, "rateUp": 1e6, "maxElevation": 40.0}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (_window(end=-5), "window 2: 'end' must be after 'start'"),
        (_window(rateDown="fast"), "window 2: 'rateDown' must be a number"),
        (_window(rateUp=True), "window 2: 'rateUp' must be a number"),
        (_window(rateUp=-1.0), "window 2: 'rateUp' must not be negative"),
        (_window(station=None), "window 2: missing 'station'"),
        (_window(satellite=""), "window 2: 'satellite' must be a name"),
        # A blank or '#' would not survive an ION file; '+' joins merged stations.
        (_window(satellite="sat a"), "window 2: 'satellite' must be a name"),
        (_window(station="g#1"), "window 2: 'station' must be a name"),
        (_window(start="2024-03-24T00:00:00"), "window 2: 'start' time .* has no UTC offset"),
        (_window(start="tomorrow"), "window 2: 'start' 'tomorrow' is neither a number"),
        (_window(maxElevation=float("nan")), "window 2: 'maxElevation' must be a number"),
        (_window(rate=5), "window 2: unknown field 'rate'"),
        ([1, 2], "window 2: must be a mapping"),
    ],
)
def test_data_errors_name_the_window_and_field(window: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        plan_from_data([_window(), _window(start=1000, end=1480), window])


def test_ion_round_trip_keeps_rates_and_times() -> None:
    plan = _plan()
    text = dump_ion(plan)
    assert "a contact +1711238400.125 +1711238880.5 sat-c kashgar 1562500" in text
    # ION has no elevation; everything else survives.
    expected = [replace(c, max_elevation=0.0) for c in plan]
    assert load_ion(text).contacts == tuple(expected)


def test_ion_text_with_comments_ranges_and_unpaired_downlinks() -> None:
    text = """
    # a hand-written plan
    a range +0 +86400 sat ground 1
    a contact +100 +580 sat ground 6250000   # downlink, 50 Mbit/s
    a contact +100 +580 ground sat 125000
    a contact 2024/03/24-00:00:00 2024/03/24-00:08:00 sat kashgar 1000000
    """
    plan = load_ion(text, rate_up_ratio=0.02)
    first, second = plan.contacts
    assert (first.start, first.end, first.station, first.rate_down, first.rate_up) == (
        100.0,
        580.0,
        "ground",
        50e6,
        1e6,
    )
    assert (second.start, second.duration, second.station) == (1711238400.0, 480.0, "kashgar")
    assert second.rate_down == 8e6
    assert second.rate_up == pytest.approx(8e6 * 0.02)
    assert load_ion(text).contacts[1].rate_up == 0.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a contact +600 +500 sat ground 10", "line 3: end must be after start"),
        ("a contact +0 +500 sat ground lots", "line 3: rate 'lots' is not a number"),
        ("a contact +0 +500 sat ground", "line 3: expected 'a contact"),
        ("a plan +0 +500 sat ground 10", "line 3: expected 'a contact"),
        ("a contact 0 +500 sat ground 10", "line 3: time '0' must be"),
        ("a contact +0 +500 sat sat 10", "line 3: a contact needs two different nodes"),
        ("a contact +0 +500 ground sat2 10", "line 3: ground is a satellite here but a station"),
        ("a contact +100 +580 sat ground 1", "line 3: duplicate of line 1"),
        ("a contact +100 +580 ground sat 1", "line 3: duplicate uplink for line 1"),
    ],
)
def test_ion_errors_name_the_line(line: str, message: str) -> None:
    text = "a contact +100 +580 sat ground 6250000\na contact +100 +580 ground sat 125000\n"
    with pytest.raises(ValueError, match=f"^{message}"):
        load_ion(text + line + "\n")


def test_load_plan_dispatches_on_suffix(tmp_path: Path) -> None:
    plan = _plan()
    (tmp_path / "p.json").write_text(json.dumps(plan_to_data(plan)))
    (tmp_path / "p.ion").write_text(dump_ion(plan))
    (tmp_path / "p.yaml").write_text(
        "contacts:\n"
        "  - {start: 2024-03-24T00:00:00Z, end: 2024-03-24T00:08:00Z, satellite: s,\n"
        "     station: g, rateDown: 5.0e+7, rateUp: 1.0e+6, maxElevation: 42}\n"
    )
    assert load_plan(tmp_path / "p.json").contacts == plan.contacts
    assert len(load_plan(str(tmp_path / "p.ion"))) == len(plan)
    (c,) = load_plan(tmp_path / "p.yaml").contacts
    assert (c.start, c.duration, c.rate_down, c.max_elevation) == (1711238400.0, 480.0, 50e6, 42)
    (tmp_path / "p.csv").write_text("")
    with pytest.raises(ValueError, match=r"unknown contact plan format '\.csv'"):
        load_plan(tmp_path / "p.csv")


def test_merged_joins_overlapping_passes_across_stations() -> None:
    plan = ContactPlan(
        [
            Contact(0, 300, "s", "beijing", 50e6, 1e6, 40),
            Contact(200, 500, "s", "kashgar", 100e6, 0.5e6, 20),
            Contact(500, 600, "s", "sanya", 10e6, 5e6, 10),
            Contact(1000, 1100, "s", "beijing", 50e6, 1e6, 30),
            Contact(250, 400, "other", "beijing", 50e6, 1e6, 30),
        ]
    )
    first, second = plan.merged("s")
    assert first == Contact(0, 600, "s", "beijing+kashgar+sanya", 100e6, 5e6, 40)
    assert second == plan.for_satellite("s")[-1]
    assert plan.merged("nobody") == ()


def test_plan_stats_uses_merged_contacts() -> None:
    plan = synthetic_plan("s", passes_per_day=6, duration=480, days=2)
    both = ContactPlan([*plan, *(replace(c, station="second") for c in plan)])
    stats = plan_stats(both, "s", days=2)
    assert stats == plan_stats(plan, "s", days=2)
    assert stats.passes_per_day == len(plan) / 2
    assert stats.mean_duration_s == 480
    assert stats.contact_s_per_day == 480 * len(plan) / 2
    starts = [c.start for c in plan]
    assert stats.longest_gap_s == max(b - a - 480 for a, b in itertools.pairwise(starts))
    empty = plan_stats(ContactPlan(), "s", days=1)
    assert (empty.passes_per_day, empty.longest_gap_s) == (0.0, 86_400.0)


def test_whole_number_times_given_as_ints_dump_to_ion() -> None:
    plan = ContactPlan([Contact(0, 300, "sat-0", "ground", 50e6, 1e6)])
    assert load_ion(dump_ion(plan)).contacts[0].end == 300


def test_a_long_contact_is_current_behind_many_short_ones() -> None:
    # One station sees the satellite for 1000 s while eight others pass in and out.
    long = Contact(0, 1000, "s", "big-dish", 50e6, 1e6)
    short = [Contact(10 + 20 * k, 15 + 20 * k, "s", f"g{k}", 50e6, 1e6) for k in range(8)]
    plan = ContactPlan([long, *short])
    assert plan.current("s", 500) == long
    assert plan.next_contact("s", 500) == long
    assert plan.current("s", 12) in (long, short[0])
    assert plan.current("s", 1000) is None
