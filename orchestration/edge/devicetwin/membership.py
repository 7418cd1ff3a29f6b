"""What DeviceTwin reads from ``devices.kubeedge.io/v1beta1`` Device and DeviceModel objects.

The cloud's objects were accepted by the API server, but this node checks every field it
uses: a bad object is refused with a reason, never half-applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .topics import valid_name
from .twins import BAD_REQUEST, Change, Refusal, Rule, Twin, Version

__all__ = ["Identity", "desired_changes", "identity", "model_rules", "reports_to_cloud"]

MAX_PROPERTIES = 1024  # per Device or DeviceModel


@dataclass(frozen=True, slots=True)
class Identity:
    namespace: str
    name: str
    resource_version: int  # the cloud's version of the object; 0 when it has none


def identity(obj: Any, kind: str) -> Identity:
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        raise Refusal(BAD_REQUEST, f"a {kind} must be an object with metadata")
    meta = obj["metadata"]
    namespace, name = meta.get("namespace") or "default", meta.get("name")
    for field, value in (("namespace", namespace), ("name", name)):
        if not isinstance(value, str) or not valid_name(value):
            raise Refusal(BAD_REQUEST, f"{kind} metadata.{field} {value!r} is not a valid name")
    rv = meta.get("resourceVersion", "")
    if not isinstance(rv, str) or not (rv == "" or (rv.isascii() and rv.isdigit())):
        raise Refusal(
            BAD_REQUEST, f"{kind} {namespace}/{name}: resourceVersion {rv!r} is not numeric"
        )
    spec = obj.get("spec", {})
    if not isinstance(spec, dict):
        raise Refusal(BAD_REQUEST, f"{kind} {namespace}/{name}: spec must be an object")
    return Identity(namespace, name, int(rv or 0))


def _properties(obj: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    props = (obj.get("spec") or {}).get("properties") or []
    if not isinstance(props, list) or len(props) > MAX_PROPERTIES:
        raise Refusal(
            BAD_REQUEST, f"{kind} spec.properties must be a list of at most {MAX_PROPERTIES}"
        )
    for prop in props:
        if not isinstance(prop, dict) or not isinstance(prop.get("name"), str):
            raise Refusal(BAD_REQUEST, f"{kind} spec.properties[] must be objects with a name")
    return props


def node_name(device: dict[str, Any]) -> str:
    node = (device.get("spec") or {}).get("nodeName")
    return node if isinstance(node, str) else ""


def model_name(device: dict[str, Any]) -> str:
    ref = (device.get("spec") or {}).get("deviceModelRef")
    name = ref.get("name") if isinstance(ref, dict) else None
    return name if isinstance(name, str) else ""


def description(device: dict[str, Any]) -> str:
    labels = (device.get("metadata") or {}).get("labels")  # where KubeEdge keeps it
    text = labels.get("description") if isinstance(labels, dict) else None
    return text if isinstance(text, str) else ""


def model_rules(model: dict[str, Any] | None) -> dict[str, Rule]:
    """Property types (INT -> int) and access modes from a DeviceModel."""
    if model is None:
        return {}
    rules = {}
    for prop in _properties(model, "DeviceModel"):
        kind = prop.get("type")
        rules[prop["name"]] = Rule(
            kind.lower() if isinstance(kind, str) and kind else None,
            prop.get("accessMode") == "ReadOnly",
        )
    return rules


def property_names(device: dict[str, Any]) -> set[str]:
    return {p["name"] for p in _properties(device, "Device")}


def desired_changes(
    device: dict[str, Any], version: int, twins: dict[str, Twin], rules: dict[str, Rule]
) -> dict[str, Change]:
    """Each ``spec.properties[]`` as a cloud sync of its twin: ``desired.value`` becomes the
    expected value at cloud version ``version`` (the Device's resourceVersion).

    The Device carries no edge version, and a spec change is the cloud's newer intent that
    must reach the mapper even after an app set the expected value locally; so the edge
    version offered is the local one, and only the cloud version decides.
    """
    changes: dict[str, Change] = {}
    for prop in _properties(device, "Device"):
        name = prop["name"]
        desired = prop.get("desired")
        value = desired.get("value") if isinstance(desired, dict) else None
        meta = desired.get("metadata") if isinstance(desired, dict) else None
        kind = meta.get("type") if isinstance(meta, dict) else None
        rule = rules.get(name)
        if not isinstance(value, str) or not value or (rule is not None and rule.read_only):
            value = None  # no desired value (or one a ReadOnly property cannot take)
        local = twins.get(name)
        edge = local.expected_version.edge if local and local.expected_version else 0
        changes[name] = Change(
            expected=value,
            type=kind if isinstance(kind, str) and kind else None,
            optional=False,  # the Device's own properties cannot be deleted from the edge
            expected_version=Version(version, edge) if value is not None else None,
        )
    return changes


def reports_to_cloud(device: dict[str, Any], prop: str) -> bool:
    """``spec.properties[].reportToCloud`` (default true; twins the edge added: true)."""
    for p in (device.get("spec") or {}).get("properties") or []:
        if isinstance(p, dict) and p.get("name") == prop:
            return p.get("reportToCloud") is not False
    return True


def state_reports_to_cloud(device: dict[str, Any]) -> bool:
    """``spec.stateReport.reportToCloud`` (v1.23), default true."""
    report = (device.get("spec") or {}).get("stateReport")
    return not (isinstance(report, dict) and report.get("reportToCloud") is False)
