"""Device twins and KubeEdge's rules for changing them (kubeedge.md §5.3, ``dtmanager/twin.go``).

A twin is one device property: the ``expected`` value (what the cloud or an app wants), the
``actual`` value (what the mapper reads from the device), each with a ``{cloud, edge}``
version. An edge-originated change (MQTT ``twin/update``, a mapper report) bumps the edge
version of the side it changes; a cloud sync carries versions and is refused when the local
copy is newer on either count, so a late or replayed cloud message never rolls a twin back.

Everything here is pure: functions take the current twins and return the new ones with what
changed, and raise ``Refusal`` (nothing applied) for a request that breaks a rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

__all__ = [
    "BAD_REQUEST",
    "CONFLICT",
    "INTERNAL",
    "NOT_FOUND",
    "Change",
    "Outcome",
    "Refusal",
    "Rule",
    "Twin",
    "Value",
    "Version",
    "accepts",
    "apply_cloud",
    "apply_edge",
    "check_key",
    "counter",
    "delta",
]

# KubeEdge's result codes (dtcommon).
BAD_REQUEST, NOT_FOUND, CONFLICT, INTERNAL = 400, 404, 409, 500

# KubeEdge's exact patterns (dtcommon.ValidateTwinKey/Value): ASCII letters, digits and
# - _ . , : / @ #; keys 1-128 characters, non-empty values 1-512. ASCII, so characters = bytes.
_KEY = re.compile(r"[A-Za-z0-9_.,:/@#-]{1,128}")
_VALUE = re.compile(r"[A-Za-z0-9_.,:/@#-]{1,512}")
_INT = re.compile(r"[+-]?[0-9]+")
_FREE_TYPES = frozenset({"string", "bytes", "stream"})
TYPES = _FREE_TYPES | {"int", "integer", "float", "double", "boolean"}
DEFAULT_TYPE = "string"


class Refusal(Exception):
    """A request DeviceTwin answers with a KubeEdge error code; ``reason`` says what is wrong."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class Version:
    cloud: int = 0
    edge: int = 0

    def view(self) -> dict[str, int]:
        return {"cloud": self.cloud, "edge": self.edge}


@dataclass(frozen=True, slots=True)
class Value:
    value: str
    timestamp: int  # ms

    def view(self) -> dict[str, Any]:
        return {"value": self.value, "metadata": {"timestamp": self.timestamp}}


@dataclass(slots=True)
class Twin:
    type: str = DEFAULT_TYPE  # metadata.type, lowercase
    optional: bool = True  # edge-added twins may be deleted; the Device's own may not
    expected: Value | None = None
    actual: Value | None = None
    expected_version: Version | None = None
    actual_version: Version | None = None

    def copy(self) -> Twin:
        return Twin(
            self.type,
            self.optional,
            self.expected,
            self.actual,
            _copy(self.expected_version),
            _copy(self.actual_version),
        )

    def view(self, *, versions: bool = False) -> dict[str, Any]:
        """KubeEdge's ``MsgTwin`` JSON; apps and mappers never see the versions."""
        out: dict[str, Any] = {}
        if self.expected is not None:
            out["expected"] = self.expected.view()
        if self.actual is not None:
            out["actual"] = self.actual.view()
        out["optional"] = self.optional
        out["metadata"] = {"type": self.type}
        if versions:
            if self.expected_version is not None:
                out["expected_version"] = self.expected_version.view()
            if self.actual_version is not None:
                out["actual_version"] = self.actual_version.view()
        return out

    @classmethod
    def from_view(cls, data: Any) -> Twin:
        """The inverse of ``view(versions=True)``, for stored twins; ValueError if damaged."""
        if not isinstance(data, dict):
            raise ValueError("a twin must be an object")
        meta = data.get("metadata") or {}
        kind = meta.get("type", DEFAULT_TYPE) if isinstance(meta, dict) else None
        optional = data.get("optional", True)
        if not isinstance(kind, str) or not isinstance(optional, bool):
            raise ValueError("twin metadata.type must be a string and optional a boolean")
        return cls(
            kind,
            optional,
            _value(data.get("expected")),
            _value(data.get("actual")),
            _version(data.get("expected_version")),
            _version(data.get("actual_version")),
        )


def _copy(version: Version | None) -> Version | None:
    return None if version is None else Version(version.cloud, version.edge)


def _value(data: Any) -> Value | None:
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("metadata", {}), dict):
        raise ValueError("a twin value must be an object with an object metadata")
    value, stamp = data.get("value"), data.get("metadata", {}).get("timestamp", 0)
    if not isinstance(value, str) or not isinstance(stamp, int):
        raise ValueError("a twin value must be {value: string, metadata: {timestamp: int}}")
    return Value(value, stamp)


def _version(data: Any) -> Version | None:
    if data is None:
        return None
    cloud = data.get("cloud") if isinstance(data, dict) else None
    edge = data.get("edge") if isinstance(data, dict) else None
    if not (counter(cloud) and counter(edge)):
        raise ValueError("a twin version must be {cloud: int >= 0, edge: int >= 0}")
    return Version(cloud, edge)


def counter(n: Any) -> TypeGuard[int]:
    """A version number: a non-negative int (JSON true is not one)."""
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


@dataclass(frozen=True, slots=True)
class Rule:
    """What the DeviceModel says of a property."""

    type: str | None = None  # lowercase model type (INT -> int); None: unknown
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """One property of an update request; a None value leaves that side alone."""

    expected: str | None = None
    actual: str | None = None
    type: str | None = None
    optional: bool | None = None
    expected_version: Version | None = None  # cloud syncs only
    actual_version: Version | None = None


@dataclass(slots=True)
class Outcome:
    twins: dict[str, Twin]  # the device's twins after the change
    documents: dict[str, tuple[Twin | None, Twin | None]] = field(default_factory=dict)
    result: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # update/result
    rejected: list[str] = field(default_factory=list)  # cloud syncs refused on version
    skipped: dict[str, str] = field(default_factory=dict)  # cloud values refused, and why
    dirty: bool = False  # something (a value, a version) must be written

    @property
    def changed(self) -> list[str]:
        """Properties whose value, type or optionality changed (what goes in documents)."""
        return list(self.documents)


def check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise Refusal(
            BAD_REQUEST,
            f"twin key {key[:140]!r} must be 1-128 characters of letters, digits and "
            "- _ . , : / @ #",
        )


def check_type(key: str, kind: str) -> None:
    if kind not in TYPES:
        raise Refusal(
            BAD_REQUEST, f"twin {key!r}: type {kind[:64]!r} is not one of {sorted(TYPES)}"
        )


def check_value(key: str, side: str, value: str, kind: str) -> None:
    """KubeEdge's charset and length, then the property's type (``dtcommon.ValidateValue``)."""
    if value and not _VALUE.fullmatch(value):
        raise Refusal(
            BAD_REQUEST,
            f"twin {key!r}: {side} value must be at most 512 characters of letters, digits "
            "and - _ . , : / @ #",
        )
    if kind in _FREE_TYPES:
        return
    if kind in ("int", "integer"):
        ok = bool(_INT.fullmatch(value)) and -(2**63) <= int(value) < 2**63
    elif kind in ("float", "double"):
        ok = _is_float(value)
    else:  # boolean
        ok = value in ("true", "false")
    if not ok:
        raise Refusal(BAD_REQUEST, f"twin {key!r}: {side} value {value!r} is not a valid {kind}")


def _is_float(value: str) -> bool:
    if "_" in value:  # Python accepts digit separators, Go's ParseFloat does not
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def accepts(local: Version | None, incoming: Version) -> bool:
    """KubeEdge's sync rule: refused when the local cloud or edge version is the newer."""
    return local is None or (local.cloud <= incoming.cloud and local.edge <= incoming.edge)


def _edge_bump(version: Version | None) -> Version:
    return Version(version.cloud, version.edge + 1) if version else Version(0, 1)


def _resolve_type(rule: Rule | None, old: Twin | None, change: Change) -> str:
    if rule is not None and rule.type:
        return rule.type  # the model decides what a property holds
    if change.type:
        return change.type.lower()
    return old.type if old is not None else DEFAULT_TYPE


def apply_edge(
    twins: dict[str, Twin],
    changes: dict[str, Change | None],
    *,
    now: int,
    rules: dict[str, Rule],
    max_twins: int,
    from_mapper: bool = False,
) -> Outcome:
    """An app's or mapper's update: all of it or, on the first broken rule, a Refusal.

    A None change deletes an optional twin. ``from_mapper``: an observed desired value of a
    ReadOnly property is dropped (a mapper echoes what it has) instead of refused.
    """
    out = Outcome(dict(twins))
    for key, change in changes.items():
        check_key(key)
        old = out.twins.get(key)
        if change is None:
            if old is None:
                raise Refusal(BAD_REQUEST, f"twin {key!r} does not exist, so cannot be deleted")
            if not old.optional:
                raise Refusal(BAD_REQUEST, f"twin {key!r} is not optional and cannot be deleted")
            del out.twins[key]
            out.documents[key] = (old, None)
            out.result[key] = None
            continue
        rule = rules.get(key)
        kind = _resolve_type(rule, old, change)
        check_type(key, kind)
        expected = change.expected
        if expected is not None and rule is not None and rule.read_only:
            if not from_mapper:
                raise Refusal(
                    BAD_REQUEST, f"twin {key!r} is ReadOnly: only its actual value can be set"
                )
            expected = None
        for side, value in (("expected", expected), ("actual", change.actual)):
            if value is not None:
                check_value(key, side, value, kind)
        if old is None:
            if len(out.twins) >= max_twins:
                raise Refusal(BAD_REQUEST, f"twin {key!r}: a device holds at most {max_twins}")
            twin = Twin(kind, True if change.optional is None else change.optional)
            if expected is not None:
                twin.expected, twin.expected_version = Value(expected, now), Version(0, 1)
            if change.actual is not None:
                twin.actual, twin.actual_version = Value(change.actual, now), Version(0, 1)
            out.twins[key] = twin
            out.documents[key] = (None, twin)
            out.result[key] = twin.view()
            continue
        twin = old.copy()
        entry: dict[str, Any] = {}
        if expected is not None and (old.expected is None or old.expected.value != expected):
            twin.expected = Value(expected, now)
            twin.expected_version = _edge_bump(old.expected_version)
            entry["expected"] = twin.expected.view()
        if change.actual is not None and (old.actual is None or old.actual.value != change.actual):
            twin.actual = Value(change.actual, now)
            twin.actual_version = _edge_bump(old.actual_version)
            entry["actual"] = twin.actual.view()
        if change.optional is False and old.optional:  # KubeEdge: true -> false only
            twin.optional = False
        twin.type = kind
        if entry or twin.optional != old.optional or twin.type != old.type:
            entry["optional"], entry["metadata"] = twin.optional, {"type": twin.type}
            out.twins[key] = twin
            out.documents[key] = (old, twin)
            out.result[key] = entry
    out.dirty = bool(out.documents)
    return out


def apply_cloud(
    twins: dict[str, Twin],
    changes: dict[str, Change],
    *,
    now: int,
    rules: dict[str, Rule],
    keep: set[str] | None = None,
) -> Outcome:
    """A cloud sync: each side with a value must carry its version and pass ``accepts``.

    A property refused on version is listed in ``rejected`` and left as it is (the caller
    may send the edge's copy back up); an invalid value is listed in ``skipped``. With
    ``keep`` (the Device's property names), non-optional twins not in it are removed.
    """
    out = Outcome(dict(twins))
    for key, change in changes.items():
        old = out.twins.get(key)
        kind = _resolve_type(rules.get(key), old, change)
        try:
            check_key(key)
            check_type(key, kind)
            for side, value in (("expected", change.expected), ("actual", change.actual)):
                if value is not None:
                    check_value(key, side, value, kind)
        except Refusal as exc:
            out.skipped[key] = exc.reason
            continue
        twin = old.copy() if old is not None else Twin(kind, bool(change.optional))
        refused = False
        for side in ("expected", "actual"):
            wanted: str | None = getattr(change, side)
            incoming: Version | None = getattr(change, f"{side}_version")
            if wanted is None:
                continue
            if incoming is None or not accepts(getattr(twin, f"{side}_version"), incoming):
                refused = True
                break
            current: Value | None = getattr(twin, side)
            if current is None or current.value != wanted:
                setattr(twin, side, Value(wanted, now))
            setattr(twin, f"{side}_version", Version(incoming.cloud, incoming.edge))
        if refused:
            out.rejected.append(key)
            continue
        if change.optional is False:
            twin.optional = False
        twin.type = kind
        if twin != old:
            out.twins[key] = twin
            out.dirty = True
            if old is None or _shown(old) != _shown(twin):
                out.documents[key] = (old, twin)
    if keep is not None:
        for key, twin in list(out.twins.items()):
            if key not in keep and not twin.optional:
                del out.twins[key]
                out.documents[key] = (twin, None)
                out.dirty = True
    return out


def _shown(twin: Twin) -> dict[str, Any]:
    """What apps see of a twin, timestamps aside: a version-only change is not news."""
    view = twin.view()
    for side in ("expected", "actual"):
        if side in view:
            view[side] = view[side]["value"]
    return view


def delta(twins: dict[str, Twin]) -> dict[str, str]:
    """Properties whose (non-empty) expected value differs from the actual one."""
    return {
        key: twin.expected.value
        for key, twin in twins.items()
        if twin.expected is not None
        and twin.expected.value
        and (twin.actual is None or twin.actual.value != twin.expected.value)
    }
