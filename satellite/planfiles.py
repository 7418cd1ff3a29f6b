"""Contact plans as files, so runs can be driven without any orbit code (satellite.md §3.3).

Two formats: a list of windows as YAML/JSON data (the readable one, for fixtures and
configuration), and ION-DTN's ``a contact`` lines (what DTN tooling exchanges). ION has one
line per direction with a rate in bytes/s; a ``Contact`` holds both directions in bits/s, so the
satellite->station line (downlink) and the station->satellite line (uplink) of one interval are
paired. Every error names the window index or line number so a bad plan can be fixed by hand.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .contacts import Contact, ContactPlan

# ION lines are split on blanks and '#' starts a comment; '+' joins merged stations.
_NODE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,253}$")

__all__ = [
    "dump_ion",
    "load_ion",
    "load_plan",
    "plan_from_data",
    "plan_to_data",
]

_REQUIRED = ("start", "end", "satellite", "station", "rateDown", "rateUp")
_KNOWN = {*_REQUIRED, "maxElevation"}


def plan_to_data(plan: ContactPlan) -> list[dict[str, Any]]:
    """Windows as plain data (times in the plan's own seconds, rates in bits/s)."""
    return [
        {
            "start": c.start,
            "end": c.end,
            "satellite": c.satellite,
            "station": c.station,
            "rateDown": c.rate_down,
            "rateUp": c.rate_up,
            "maxElevation": c.max_elevation,
        }
        for c in plan
    ]


def _time(value: object) -> float:
    """A number, an aware datetime (YAML parses timestamps itself) or an RFC 3339 string."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is neither a number nor an RFC 3339 time") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"time {value.isoformat()} has no UTC offset")
        return value.timestamp()
    return _number(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("must be a number")
    return float(value)


def plan_from_data(items: object) -> ContactPlan:
    """A plan from a list of windows (or ``{"contacts": [...]}``); see ``plan_to_data``."""
    if isinstance(items, Mapping) and "contacts" in items:
        items = items["contacts"]
    if not isinstance(items, list):
        raise ValueError("a contact plan must be a list of windows")
    contacts = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"window {i}: must be a mapping, got {type(item).__name__}")
        unknown = sorted(set(map(str, item)) - _KNOWN)
        if unknown:
            raise ValueError(f"window {i}: unknown field {unknown[0]!r}")
        for key in _REQUIRED:
            if key not in item:
                raise ValueError(f"window {i}: missing {key!r}")
        values: dict[str, Any] = {}
        for key in ("satellite", "station"):
            if not isinstance(item[key], str) or not _NODE_NAME.match(item[key]):
                raise ValueError(
                    f"window {i}: {key!r} must be a name of letters, digits, '.', '_' or '-'"
                )
            values[key] = item[key]
        for key, parse in (("start", _time), ("end", _time), ("rateDown", _number),
                           ("rateUp", _number), ("maxElevation", _number)):  # fmt: skip
            if key in item:
                try:
                    values[key] = parse(item[key])
                except ValueError as e:
                    raise ValueError(f"window {i}: {key!r} {e}") from None
        if not values["end"] > values["start"]:
            raise ValueError(f"window {i}: 'end' must be after 'start'")
        for key in ("rateDown", "rateUp"):
            if values[key] < 0:
                raise ValueError(f"window {i}: {key!r} must not be negative")
        contacts.append(
            Contact(
                values["start"],
                values["end"],
                values["satellite"],
                values["station"],
                values["rateDown"],
                values["rateUp"],
                values.get("maxElevation", 0.0),
            )
        )
    return ContactPlan(contacts)


def _fmt(x: float) -> str:
    # repr() round-trips a float exactly; whole numbers stay free of a trailing ".0".
    x = float(x)  # a Contact keeps ints as given, and int has no is_integer() before 3.12
    return str(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x)


def dump_ion(plan: ContactPlan) -> str:
    """``a contact`` lines, downlink first then uplink; rates in bytes/s as ION wants.

    Times are ``+seconds`` on the plan's own time base (ION reads ``+N`` as relative)."""
    lines = ["# contact plan: FROM TO = satellite station is the downlink; rates in bytes/s"]
    for c in plan:
        span = f"+{_fmt(c.start)} +{_fmt(c.end)}"
        lines.append(f"a contact {span} {c.satellite} {c.station} {_fmt(c.rate_down / 8)}")
        if c.rate_up > 0:
            lines.append(f"a contact {span} {c.station} {c.satellite} {_fmt(c.rate_up / 8)}")
    return "\n".join(lines) + "\n"


_ABSOLUTE = re.compile(r"^(\d{4})/(\d{2})/(\d{2})-(\d{2}):(\d{2}):(\d{2})$")


def _ion_number(token: str, what: str) -> float:
    try:
        return _number(float(token))
    except ValueError:
        raise ValueError(f"{what} {token!r} is not a number") from None


def _ion_time(token: str) -> float:
    if token.startswith("+"):
        return _ion_number(token[1:], "time")
    m = _ABSOLUTE.match(token)
    if m is None:
        raise ValueError(f"time {token!r} must be +SECONDS or yyyy/mm/dd-hh:mm:ss")
    y, mo, d, h, mi, sec = map(int, m.groups())
    return datetime(y, mo, d, h, mi, sec, tzinfo=UTC).timestamp()


def load_ion(text: str, *, rate_up_ratio: float | None = None) -> ContactPlan:
    """A plan from ION ``a contact +START +END FROM TO RATE`` lines.

    ION does not say which node is the satellite, so the convention is that of ``dump_ion``:
    the first line of an interval is the downlink (FROM is the satellite); a later line for the
    same interval in the other direction is its uplink. An unpaired downlink gets an uplink of
    ``rate_up_ratio`` times its rate (0 if None). ``a range`` lines are ignored."""
    if rate_up_ratio is not None and rate_up_ratio < 0:
        raise ValueError("rate_up_ratio must not be negative")
    # (start, end, satellite, station) -> [rate_down, rate_up or None, line number]
    pairs: dict[tuple[float, float, str, str], list[Any]] = {}
    roles: dict[str, tuple[str, int]] = {}  # node -> ("satellite" | "station", line)
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[:2] == ["a", "range"]:
            continue
        if words[:2] != ["a", "contact"] or len(words) != 7:
            raise ValueError(f"line {n}: expected 'a contact +START +END FROM TO RATE'")
        try:
            start, end = _ion_time(words[2]), _ion_time(words[3])
            rate = _ion_number(words[6], "rate")
        except ValueError as e:
            raise ValueError(f"line {n}: {e}") from None
        if not end > start:
            raise ValueError(f"line {n}: end must be after start")
        if rate < 0:
            raise ValueError(f"line {n}: rate must not be negative")
        src, dst = words[4], words[5]
        if src == dst:
            raise ValueError(f"line {n}: a contact needs two different nodes")
        reverse = pairs.get((start, end, dst, src))
        if reverse is not None:
            if reverse[1] is not None:
                raise ValueError(f"line {n}: duplicate uplink for line {reverse[2]}")
            reverse[1] = rate * 8
            continue
        if (start, end, src, dst) in pairs:
            raise ValueError(f"line {n}: duplicate of line {pairs[(start, end, src, dst)][2]}")
        for node, role in ((src, "satellite"), (dst, "station")):
            seen = roles.setdefault(node, (role, n))
            if seen[0] != role:
                raise ValueError(
                    f"line {n}: {node} is a {role} here but a {seen[0]} on line {seen[1]}"
                )
        pairs[(start, end, src, dst)] = [rate * 8, None, n]
    ratio = rate_up_ratio or 0.0
    return ContactPlan(
        Contact(s, e, sat, gs, down, down * ratio if up is None else up)
        for (s, e, sat, gs), (down, up, _n) in pairs.items()
    )


def load_plan(path: str | Path) -> ContactPlan:
    """Load a plan file by suffix: ``.yaml``/``.yml``/``.json`` data, ``.ion``/``.txt`` ION."""
    path = Path(path)
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        import yaml  # only needed for YAML plans

        return plan_from_data(yaml.safe_load(text))
    if suffix == ".json":
        return plan_from_data(json.loads(text))
    if suffix in (".ion", ".txt"):
        return load_ion(text)
    raise ValueError(f"{path}: unknown contact plan format {suffix!r} (yaml, json, ion, txt)")
