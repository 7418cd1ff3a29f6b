"""The downward API: pod fields and container resources exposed to the containers, through
``fieldRef``/``resourceFieldRef`` in env and ``downwardAPI`` volumes."""

from __future__ import annotations

import json
import math
import os
import re
from fractions import Fraction
from typing import Any

from .configuring import ConfigError, as_dict, as_str
from .quantities import parse_quantity

POD_IP = HOST_IP = "127.0.0.1"  # processes share the node's network namespace
_KEYED = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def field_value(pod: dict[str, Any], field_path: str, *, volume: bool = False) -> str:
    meta = _section(pod, "metadata")
    spec = _section(pod, "spec")
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
        "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
    }
    if field_path in simple:
        value = simple[field_path]
        return value if isinstance(value, str) else ""
    m = _KEYED.match(field_path)
    if m:
        values = meta.get(m[1])
        found = values.get(m[2]) if isinstance(values, dict) else None
        return found if isinstance(found, str) else ""
    if volume and field_path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(field_path.split(".")[1])
        items = sorted(values.items()) if isinstance(values, dict) else []
        # kubelet's fieldpath.FormatMap: key="quoted value" lines, sorted by key
        return "\n".join(f"{k}={json.dumps(str(v), ensure_ascii=False)}" for k, v in items)
    raise ConfigError(f'unsupported fieldRef fieldPath "{field_path}"')


def _section(pod: dict[str, Any], key: str) -> dict[str, Any]:
    value = pod.get(key)
    return value if isinstance(value, dict) else {}


def resource_value(pod: dict[str, Any], container: dict[str, Any], ref: dict[str, Any]) -> str:
    """``resourceFieldRef``: a limit or request, rounded up in ``divisor`` units; an unset limit
    is the node's capacity, as kubelet reports allocatable."""
    resource = as_str(ref.get("resource"), "resourceFieldRef.resource")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in _RESOURCES:
        raise ConfigError(f'unsupported resourceFieldRef resource "{resource}"')
    try:
        divisor = parse_quantity(ref.get("divisor", "1"))
    except ValueError as exc:
        raise ConfigError(f"resourceFieldRef.divisor: {exc}") from exc
    if divisor <= 0:
        raise ConfigError("resourceFieldRef.divisor: must be positive")
    resources = as_dict(container.get("resources"), "resources")
    limits = as_dict(resources.get("limits"), "resources.limits")
    requests = as_dict(resources.get("requests"), "resources.requests")
    raw = (limits if kind == "limits" else requests).get(name)
    if raw is None and kind == "requests":
        raw = limits.get(name)  # API defaulting: requests default to limits
    try:
        value = parse_quantity(raw) if raw is not None else None
    except ValueError as exc:
        raise ConfigError(f"resources.{kind}.{name}: {exc}") from exc
    if value is None:
        value = node_capacity(name) if kind == "limits" else Fraction(0)
    return str(math.ceil(value / divisor))


def node_capacity(resource: str) -> Fraction:
    if resource == "cpu":
        return Fraction(os.cpu_count() or 1)
    if resource == "memory":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        return Fraction(int(line.split()[1]) * 1024)
        except OSError:
            pass
        return Fraction(0)
    st = os.statvfs("/")
    return Fraction(st.f_blocks * st.f_frsize)
