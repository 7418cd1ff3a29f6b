"""KubeEdge's twin rules as pure functions: keys, values, types, versions, deltas."""

from __future__ import annotations

from typing import Any

import pytest
from orbiter.orchestration.edge.devicetwin.twins import (
    Change,
    Refusal,
    Rule,
    Twin,
    Value,
    Version,
    accepts,
    apply_cloud,
    apply_edge,
    check_key,
    check_value,
    delta,
)

NOW = 1_700_000_000_000


@pytest.mark.parametrize("key", ["a", "k" * 128, "temp-1_x.y,z:w/v@u#t", "A9"])
def test_keys_kubeedge_accepts(key: str) -> None:
    check_key(key)


@pytest.mark.parametrize("key", ["", "k" * 129, "temp erature", "temp$", "tëmp", "a+b", "a\nb"])
def test_keys_kubeedge_refuses(key: str) -> None:
    with pytest.raises(Refusal) as err:
        check_key(key)
    assert err.value.code == 400
    assert repr(key[:140]) in err.value.reason


def test_values_charset_and_length() -> None:
    check_value("k", "actual", "v" * 512, "string")
    check_value("k", "actual", "", "string")  # empty means "no value yet" in KubeEdge
    for bad in ("v" * 513, "two words", "50%", "x;y"):
        with pytest.raises(Refusal) as err:
            check_value("k", "actual", bad, "string")
        assert err.value.code == 400 and "'k'" in err.value.reason and "512" in err.value.reason


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("int", ["0", "-12", "9223372036854775807"], ["1.5", "abc", "", "9223372036854775808"]),
        ("integer", ["42"], ["4_2"]),
        ("float", ["1.5", "-2", "1e3"], ["abc", "1_0", ""]),
        ("double", ["0.25"], ["x"]),
        ("boolean", ["true", "false"], ["True", "1", ""]),
    ],
)
def test_values_must_parse_as_their_type(kind: str, good: list[str], bad: list[str]) -> None:
    for value in good:
        check_value("k", "expected", value, kind)
    for value in bad:
        with pytest.raises(Refusal) as err:
            check_value("k", "expected", value, kind)
        assert f"not a valid {kind}" in err.value.reason or "512" in err.value.reason


@pytest.mark.parametrize(
    ("local", "incoming", "accepted"),
    [
        (None, Version(0, 0), True),
        (Version(3, 2), Version(3, 2), True),
        (Version(3, 2), Version(4, 5), True),
        (Version(4, 2), Version(3, 9), False),  # the local cloud version is newer
        (Version(3, 5), Version(9, 4), False),  # the local edge version is newer
    ],
)
def test_sync_acceptance_rule(local: Version | None, incoming: Version, accepted: bool) -> None:
    assert accepts(local, incoming) is accepted


def test_edge_update_bumps_the_edge_version_of_the_side_it_changes() -> None:
    twins = {"t": Twin("int", False, Value("20", 1), None, Version(7, 0), None)}
    out = apply_edge(twins, {"t": Change(actual="18")}, now=NOW, rules={}, max_twins=10)
    t = out.twins["t"]
    assert (t.actual, t.actual_version) == (Value("18", NOW), Version(0, 1))
    assert t.expected_version == Version(7, 0)  # untouched side, untouched version
    out = apply_edge(out.twins, {"t": Change(expected="25")}, now=NOW, rules={}, max_twins=10)
    assert out.twins["t"].expected_version == Version(7, 1)
    assert twins["t"].expected_version == Version(7, 0)  # inputs are never changed
    # The same value again is no change: no version, no document.
    again = apply_edge(out.twins, {"t": Change(expected="25")}, now=NOW, rules={}, max_twins=10)
    assert (again.dirty, again.documents, again.result) == (False, {}, {})


def test_edge_update_is_all_or_nothing() -> None:
    twins = {"t": Twin("int", False)}
    with pytest.raises(Refusal):
        apply_edge(
            twins,
            {"t": Change(actual="1"), "u": Change(actual="bad value")},
            now=NOW,
            rules={},
            max_twins=10,
        )
    assert twins == {"t": Twin("int", False)}


def test_model_type_and_read_only() -> None:
    rules = {"h": Rule("float", read_only=True)}
    with pytest.raises(Refusal) as err:
        apply_edge({}, {"h": Change(expected="1.5")}, now=NOW, rules=rules, max_twins=10)
    assert "ReadOnly" in err.value.reason
    with pytest.raises(Refusal) as err:
        apply_edge(
            {}, {"h": Change(actual="warm", type="string")}, now=NOW, rules=rules, max_twins=9
        )
    assert "not a valid float" in err.value.reason  # the model's type wins over the message's
    mapper = apply_edge(
        {},
        {"h": Change(expected="1", actual="2")},
        now=NOW,
        rules=rules,
        max_twins=9,
        from_mapper=True,
    )
    assert mapper.twins["h"].expected is None and mapper.twins["h"].actual == Value("2", NOW)


def test_cloud_sync_refused_on_version_keeps_the_local_twin() -> None:
    twins = {"t": Twin("int", False, Value("20", 1), Value("19", 1), Version(5, 2), Version(0, 3))}
    stale = {"t": Change(expected="30", expected_version=Version(6, 1))}
    out = apply_cloud(twins, stale, now=NOW, rules={})
    assert out.rejected == ["t"] and out.twins["t"].expected == Value("20", 1) and not out.dirty
    unversioned = apply_cloud(twins, {"t": Change(actual="1")}, now=NOW, rules={})
    assert unversioned.rejected == ["t"]
    fresh = {"t": Change(expected="30", expected_version=Version(6, 2))}
    out = apply_cloud(twins, fresh, now=NOW, rules={})
    assert out.twins["t"].expected == Value("30", NOW)
    assert out.twins["t"].expected_version == Version(6, 2) and out.changed == ["t"]


def test_cloud_sync_prunes_properties_the_device_dropped() -> None:
    twins = {"gone": Twin(optional=False), "edge-added": Twin(optional=True)}
    out = apply_cloud(twins, {}, now=NOW, rules={}, keep=set())
    assert set(out.twins) == {"edge-added"} and out.documents["gone"] == (twins["gone"], None)


def test_delta_lists_unmet_expected_values() -> None:
    twins = {
        "met": Twin(expected=Value("1", 0), actual=Value("1", 0)),
        "unmet": Twin(expected=Value("2", 0), actual=Value("1", 0)),
        "unread": Twin(expected=Value("3", 0)),
        "empty": Twin(expected=Value("", 0), actual=Value("1", 0)),
        "actual-only": Twin(actual=Value("1", 0)),
    }
    assert delta(twins) == {"unmet": "2", "unread": "3"}


def test_stored_twins_round_trip_and_damage_is_detected() -> None:
    twin = Twin("int", False, Value("1", 2), Value("3", 4), Version(5, 6), None)
    assert Twin.from_view(twin.view(versions=True)) == twin
    assert "expected_version" not in twin.view()
    damaged: list[Any] = [[], {"expected": {"value": 1}}, {"actual_version": {"cloud": -1}}]
    for bad in damaged:
        with pytest.raises(ValueError):
            Twin.from_view(bad)
