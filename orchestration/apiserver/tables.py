"""Server-side ``Table`` output (``Accept: application/json;as=Table``), which is how
``kubectl get`` shows columns, CRDs' ``additionalPrinterColumns`` included."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..apis import ResourceType

Column = tuple[str, str, str, Callable[[dict[str, Any]], Any]]  # name, type, description, get


def _age(obj: dict[str, Any]) -> str:
    ts = obj.get("metadata", {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        created = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    return human_duration((datetime.now(UTC) - created).total_seconds())


def human_duration(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 48:
        return f"{h}h"
    return f"{h // 24}d"


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _pod_ready(obj: dict[str, Any]) -> str:
    statuses = obj.get("status", {}).get("containerStatuses") or []
    total = len(obj.get("spec", {}).get("containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{total}"


def _pod_status(obj: dict[str, Any]) -> str:
    if obj.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status", {})
    for s in status.get("containerStatuses") or []:
        state = s.get("state") or {}
        for key in ("waiting", "terminated"):
            reason = (state.get(key) or {}).get("reason")
            if reason:
                return str(reason)
    return str(status.get("reason") or status.get("phase") or "Pending")


def _restarts(obj: dict[str, Any]) -> int:
    return sum(
        int(s.get("restartCount", 0)) for s in obj.get("status", {}).get("containerStatuses") or []
    )


def _node_status(obj: dict[str, Any]) -> str:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == "Ready":
            text = "Ready" if c.get("status") == "True" else "NotReady"
            break
    else:
        text = "Unknown"
    if obj.get("spec", {}).get("unschedulable"):
        text += ",SchedulingDisabled"
    return text


def _node_roles(obj: dict[str, Any]) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(
        k[len(prefix) :]
        for k in obj.get("metadata", {}).get("labels") or {}
        if k.startswith(prefix)
    )
    return ",".join(roles) or "<none>"


def _ready_of(obj: dict[str, Any]) -> str:
    status = obj.get("status", {})
    return f"{status.get('readyReplicas', 0)}/{obj.get('spec', {}).get('replicas', 0)}"


def _ports(obj: dict[str, Any]) -> str:
    ports = obj.get("spec", {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


NAME: Column = ("Name", "string", "Name of the object", _name)
AGE: Column = ("Age", "string", "Time since creation", _age)

BUILTIN_COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("", "pods"): [
        NAME,
        ("Ready", "string", "Ready containers", _pod_ready),
        ("Status", "string", "Pod status", _pod_status),
        ("Restarts", "integer", "Container restarts", _restarts),
        AGE,
        ("IP", "string", "Pod IP", lambda o: o.get("status", {}).get("podIP", "<none>")),
        ("Node", "string", "Node", lambda o: o.get("spec", {}).get("nodeName", "<none>")),
    ],
    ("", "nodes"): [
        NAME,
        ("Status", "string", "Node status", _node_status),
        ("Roles", "string", "Node roles", _node_roles),
        AGE,
        (
            "Version",
            "string",
            "Kubelet version",
            lambda o: o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", ""),
        ),
    ],
    ("", "namespaces"): [
        NAME,
        ("Status", "string", "Phase", lambda o: o.get("status", {}).get("phase", "")),
        AGE,
    ],
    ("", "configmaps"): [
        NAME,
        (
            "Data",
            "integer",
            "Keys",
            lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {}),
        ),
        AGE,
    ],
    ("", "secrets"): [
        NAME,
        ("Type", "string", "Secret type", lambda o: o.get("type", "")),
        ("Data", "integer", "Keys", lambda o: len(o.get("data") or {})),
        AGE,
    ],
    ("", "services"): [
        NAME,
        ("Type", "string", "Service type", lambda o: o.get("spec", {}).get("type", "")),
        (
            "Cluster-IP",
            "string",
            "Cluster IP",
            lambda o: o.get("spec", {}).get("clusterIP", "<none>"),
        ),
        ("Port(s)", "string", "Ports", _ports),
        AGE,
    ],
    ("apps", "deployments"): [
        NAME,
        ("Ready", "string", "Ready replicas", _ready_of),
        (
            "Up-to-date",
            "integer",
            "Updated replicas",
            lambda o: o.get("status", {}).get("updatedReplicas", 0),
        ),
        (
            "Available",
            "integer",
            "Available replicas",
            lambda o: o.get("status", {}).get("availableReplicas", 0),
        ),
        AGE,
    ],
    ("apps", "replicasets"): [
        NAME,
        ("Desired", "integer", "Desired", lambda o: o.get("spec", {}).get("replicas", 0)),
        ("Current", "integer", "Current", lambda o: o.get("status", {}).get("replicas", 0)),
        ("Ready", "integer", "Ready", lambda o: o.get("status", {}).get("readyReplicas", 0)),
        AGE,
    ],
    ("apiextensions.k8s.io", "customresourcedefinitions"): [
        NAME,
        (
            "Created At",
            "date",
            "Creation time",
            lambda o: o.get("metadata", {}).get("creationTimestamp", ""),
        ),
    ],
}

_SEGMENT = re.compile(
    r"\.([A-Za-z0-9_\-]+)|\[(-?\d+)\]|\[(-?\d*):(-?\d*)\]"
    r"|\[\?\(@\.([A-Za-z0-9_.]+)==[\"']([^\"']*)[\"']\)\]"
)


def jsonpath_get(obj: Any, path: str) -> Any:
    """The JSONPath subset printer columns use: ``.a.b``, ``[0]``, ``[-1]``, slices such as
    ``[-1:]`` (the latest condition) and ``[?(@.type=="Ready")]``. A path may match several
    values (a slice, a filter); as in kube-apiserver, the column shows the first."""
    pos, found = 0, [obj]
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        if m is None:
            return None
        pos = m.end()
        field, index, start, stop, fkey, fval = m.groups()
        matched: list[Any] = []
        for cur in found:
            if field is not None:
                if isinstance(cur, dict) and cur.get(field) is not None:
                    matched.append(cur[field])
            elif not isinstance(cur, list):
                continue
            elif index is not None:
                if -len(cur) <= int(index) < len(cur):
                    matched.append(cur[int(index)])
            elif start is not None:  # a slice; its bounds may be empty
                matched.extend(cur[int(start) if start else None : int(stop) if stop else None])
            else:
                matched.extend(i for i in cur if str(jsonpath_get(i, "." + fkey)) == fval)
        found = matched
        if not found:
            return None
    return found[0]


def _custom_columns(rt: ResourceType) -> list[Column]:
    cols: list[Column] = [NAME]
    has_age = False
    for pc in rt.printer_columns:
        path = str(pc.get("jsonPath", ""))
        if path == ".metadata.creationTimestamp":
            has_age = True
        cols.append(
            (
                str(pc.get("name", "")),
                str(pc.get("type", "string")),
                str(pc.get("description", "")),
                _column_getter(path, str(pc.get("type", "string"))),
            )
        )
    if not has_age:
        cols.append(AGE)
    return cols


def _priority(column: dict[str, Any]) -> int:
    value = column.get("priority", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _column_getter(path: str, ctype: str) -> Callable[[dict[str, Any]], Any]:
    def get(obj: dict[str, Any]) -> Any:
        value = jsonpath_get(obj, path)
        if ctype == "date" and isinstance(value, str):
            try:
                ts = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                return human_duration((datetime.now(UTC) - ts).total_seconds())
            except ValueError:
                return value
        if value is None:
            return None
        if isinstance(value, (dict, list)):
            return str(value)
        return value

    return get


def columns_for(rt: ResourceType) -> list[Column]:
    if rt.custom:
        return _custom_columns(rt)
    return BUILTIN_COLUMNS.get((rt.group, rt.plural), [NAME, AGE])


def to_table(
    rt: ResourceType, objs: Sequence[dict[str, Any]], list_meta: dict[str, Any], include: str
) -> dict[str, Any]:
    """``include`` is the request's includeObject: None, Metadata (kubectl's) or Object."""
    cols = columns_for(rt)
    # A CRD's printer columns carry their own priority; the built-in pod columns IP and Node
    # show only with -o wide, as kubectl's.
    if rt.custom:
        priority = {str(pc.get("name", "")): _priority(pc) for pc in rt.printer_columns}
    else:
        priority = {"IP": 1, "Node": 1}
    rows = []
    for obj in objs:
        row: dict[str, Any] = {"cells": [get(obj) for _, _, _, get in cols]}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata", {}),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": [
            {
                "name": name,
                "type": ctype,
                "format": "name" if name == "Name" else "",
                "description": desc,
                "priority": priority.get(name, 0),
            }
            for name, ctype, desc, _ in cols
        ],
        "rows": rows,
    }
