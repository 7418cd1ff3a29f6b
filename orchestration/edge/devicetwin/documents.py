"""The JSON DeviceTwin reads and writes: requests checked field by field, KubeEdge's payloads.

Shapes follow KubeEdge's ``dttype`` (field names, which keys are omitted when empty):
a success carries ``{event_id, timestamp, ...}``, an error ``{event_id, timestamp, code,
reason}``. Every check raises ``Refusal`` with a reason naming the field that is wrong.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from .twins import BAD_REQUEST, Change, Refusal, Twin, Version, check_key, counter

__all__ = [
    "STATES",
    "decode",
    "delta_payload",
    "device_entry",
    "document_payload",
    "error_payload",
    "event_id_of",
    "membership_get_payload",
    "membership_updated_payload",
    "new_event_id",
    "parse_base",
    "parse_state",
    "parse_twin_update",
    "report_to_update",
    "state_payload",
    "twin_payload",
    "upstream_state",
    "upstream_twin",
]

STATES = ("online", "offline", "ok", "unhealthy", "unknown")  # what KubeEdge lets devices be
_MAX_EVENT_ID = 256


def new_event_id() -> str:
    return str(uuid.uuid4())


def decode(payload: bytes, max_payload: int) -> Any:
    if len(payload) > max_payload:
        raise Refusal(
            BAD_REQUEST, f"payload of {len(payload)} bytes is over the {max_payload}-byte cap"
        )
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Refusal(BAD_REQUEST, f"payload is not valid JSON: {exc}") from None


def event_id_of(body: Any) -> str:
    """The request's event_id if it has a usable one: error results echo it when they can."""
    event_id = body.get("event_id") if isinstance(body, dict) else None
    return event_id if isinstance(event_id, str) and len(event_id) <= _MAX_EVENT_ID else ""


def parse_base(body: Any) -> str:
    """KubeEdge's ``BaseMessage``: an object with an optional string event_id and int
    timestamp (ms); returns the event_id."""
    if not isinstance(body, dict):
        raise Refusal(BAD_REQUEST, "payload must be a JSON object")
    event_id = body.get("event_id", "")
    if event_id is None:
        event_id = ""
    if not isinstance(event_id, str) or len(event_id) > _MAX_EVENT_ID:
        raise Refusal(
            BAD_REQUEST, f"event_id must be a string of at most {_MAX_EVENT_ID} characters"
        )
    stamp = body.get("timestamp", 0)
    if stamp is not None and (not isinstance(stamp, int) or isinstance(stamp, bool)):
        raise Refusal(BAD_REQUEST, "timestamp must be an integer (milliseconds)")
    return event_id


def parse_twin_update(
    body: Any, max_properties: int, *, versions: bool = False
) -> tuple[str, dict[str, Change | None]]:
    """A ``twin/update`` (or, with ``versions``, a cloud sync): the event_id and, per
    property, its change (None: delete the twin)."""
    event_id = parse_base(body)
    twin = body.get("twin")
    if not isinstance(twin, dict):
        raise Refusal(BAD_REQUEST, 'payload must have a "twin" object of properties')
    if len(twin) > max_properties:
        raise Refusal(
            BAD_REQUEST, f"update names {len(twin)} properties; at most {max_properties} allowed"
        )
    changes: dict[str, Change | None] = {}
    for key, entry in twin.items():
        check_key(key)
        changes[key] = None if entry is None else _change(key, entry, versions)
    return event_id, changes


def _change(key: str, entry: Any, versions: bool) -> Change:
    if not isinstance(entry, dict):
        raise Refusal(BAD_REQUEST, f"twin {key!r} must be an object or null")
    meta = entry.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise Refusal(BAD_REQUEST, f"twin {key!r}: metadata must be an object")
    kind = (meta or {}).get("type")
    if kind is not None and not isinstance(kind, str):
        raise Refusal(BAD_REQUEST, f"twin {key!r}: metadata.type must be a string")
    optional = entry.get("optional")
    if optional is not None and not isinstance(optional, bool):
        raise Refusal(BAD_REQUEST, f"twin {key!r}: optional must be a boolean")
    return Change(
        expected=_side(key, entry, "expected"),
        actual=_side(key, entry, "actual"),
        type=kind or None,
        optional=optional,
        expected_version=_version(key, entry, "expected_version") if versions else None,
        actual_version=_version(key, entry, "actual_version") if versions else None,
    )


def _side(key: str, entry: dict[str, Any], side: str) -> str | None:
    data = entry.get(side)
    if data is None:
        return None
    value = data.get("value") if isinstance(data, dict) else None
    if not isinstance(value, str):
        raise Refusal(BAD_REQUEST, f"twin {key!r}: {side} must be an object with a string value")
    return value


def _version(key: str, entry: dict[str, Any], field: str) -> Version | None:
    data = entry.get(field)
    if data is None:
        return None
    cloud = data.get("cloud") if isinstance(data, dict) else None
    edge = data.get("edge") if isinstance(data, dict) else None
    if not (counter(cloud) and counter(edge)):
        raise Refusal(BAD_REQUEST, f"twin {key!r}: {field} must be {{cloud: int, edge: int}}")
    return Version(cloud, edge)


def parse_state(body: Any) -> tuple[str, str]:
    event_id = parse_base(body)
    state = body.get("state")
    if not isinstance(state, str) or state not in STATES:
        shown = repr(state[:64]) if isinstance(state, str) else type(state).__name__
        raise Refusal(BAD_REQUEST, f"state {shown} is not one of {', '.join(STATES)}")
    return event_id, state


def report_to_update(twins: Any, max_properties: int) -> dict[str, Any]:
    """A mapper's DMI report as a ``twin/update`` body: reported -> actual, observedDesired ->
    expected (kubeedge.md §5.5); the type comes from the reported metadata."""
    if not isinstance(twins, list):
        raise Refusal(BAD_REQUEST, "reported twins must be a list")
    if len(twins) > max_properties:
        raise Refusal(
            BAD_REQUEST, f"report names {len(twins)} properties; at most {max_properties} allowed"
        )
    out: dict[str, Any] = {}
    for item in twins:
        name = item.get("propertyName") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise Refusal(BAD_REQUEST, "each reported twin must be an object with a propertyName")
        entry: dict[str, Any] = {}
        for source, side in (("reported", "actual"), ("observedDesired", "expected")):
            data = item.get(source)
            if data is None:
                continue
            value = data.get("value", "") if isinstance(data, dict) else None
            meta = data.get("metadata") if isinstance(data, dict) else None
            if not isinstance(value, str) or (meta is not None and not isinstance(meta, dict)):
                raise Refusal(
                    BAD_REQUEST,
                    f"twin {name[:140]!r}: {source} must be {{value: string, metadata: object}}",
                )
            if value:  # an empty value is "nothing yet", not a value
                entry[side] = {"value": value}
            if source == "reported" and meta and meta.get("type"):
                entry["metadata"] = {"type": meta["type"]}
        out[name] = entry
    return {"event_id": "", "twin": out}


# -- payloads ---------------------------------------------------------------------------------


def error_payload(event_id: str, now: int, code: int, reason: str) -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": now, "code": code, "reason": reason}


def twin_payload(event_id: str, now: int, twin: dict[str, Any]) -> dict[str, Any]:
    """``twin/update/result`` (the changed properties) and ``twin/get/result`` (all)."""
    return {"event_id": event_id, "timestamp": now, "twin": twin}


def document_payload(
    event_id: str, now: int, documents: dict[str, tuple[Twin | None, Twin | None]]
) -> dict[str, Any]:
    twin = {
        key: {
            "last": None if last is None else last.view(),
            "current": None if current is None else current.view(),
        }
        for key, (last, current) in documents.items()
    }
    return {"event_id": event_id, "timestamp": now, "twin": twin}


def delta_payload(now: int, twins: dict[str, Twin], delta: dict[str, str]) -> dict[str, Any]:
    """Every twin with an expected value, and ``delta``: the ones the mapper should apply."""
    shown = {key: twin.view() for key, twin in twins.items() if twin.expected is not None}
    return {"event_id": new_event_id(), "timestamp": now, "twin": shown, "delta": delta}


def state_payload(
    event_id: str, now: int, name: str, state: str, last_online: str
) -> dict[str, Any]:
    device = {"name": name, "state": state}
    if last_online:
        device["last_online"] = last_online
    return {"event_id": event_id, "timestamp": now, "device": device}


def device_entry(
    device_id: str,
    name: str,
    description: str,
    state: str,
    last_online: str,
    twins: dict[str, Twin] | None,
) -> dict[str, Any]:
    """KubeEdge's ``dttype.Device`` (empty fields omitted); membership/get leaves out twins."""
    entry: dict[str, Any] = {"id": device_id, "name": name}
    if description:
        entry["description"] = description
    if state:
        entry["state"] = state
    if last_online:
        entry["last_online"] = last_online
    if twins:
        entry["twin"] = {key: twin.view() for key, twin in twins.items()}
    return entry


def membership_updated_payload(
    now: int, added: list[dict[str, Any]], removed: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "timestamp": now,
        "added_devices": added,
        "removed_devices": removed,
    }


def membership_get_payload(
    event_id: str, now: int, devices: list[dict[str, Any]]
) -> dict[str, Any]:
    return {"event_id": event_id, "timestamp": now, "devices": devices}


def upstream_twin(now: int, key: str, twin: Twin | None) -> dict[str, Any]:
    """``twin/edge_updated`` content for one property: its whole current state, so the
    latest message of a property stands for all the earlier ones (the outbox keeps one)."""
    if twin is None:
        entry: dict[str, Any] = {"metadata": {"type": "deleted"}}
    else:
        entry = {}
        if twin.expected is not None:
            entry["expected"] = twin.expected.view()
        if twin.actual is not None:
            entry["actual"] = twin.actual.view()
        entry["metadata"] = {"type": twin.type}
    return {"event_id": new_event_id(), "timestamp": now, "twin": {key: entry}}


def upstream_state(now: int, state: str) -> dict[str, Any]:
    return {"event_id": new_event_id(), "timestamp": now, "state": state}
