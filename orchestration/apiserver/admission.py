"""Defaulting and validation that the real API server does per kind, before a write."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from ..apis import ResourceType
from .selectors import LabelSelector, SelectorError

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_MAX_ANNOTATIONS = 256 * 1024

# Kinds whose names must be DNS-1123 labels (63 chars, no dots) rather than subdomains.
_LABEL_NAMED = frozenset({("", "namespaces"), ("", "services")})

Causes = list[tuple[str, str]]


def name_errors(rt: ResourceType, name: str) -> list[str]:
    if (rt.group, rt.plural) in _LABEL_NAMED:
        if len(name) > 63:
            return ["must be no more than 63 characters"]
        if not _DNS1123_LABEL.match(name):
            return [
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character (e.g. 'my-name', "
                "or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            ]
        return []
    if len(name) > 253:
        return ["must be no more than 253 characters"]
    if not _DNS1123_SUBDOMAIN.match(name):
        return [
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character (e.g. "
            "'example.com', regex used for validation is "
            "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        ]
    return []


def _qualified_name_errors(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errs = []
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        errs.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        errs.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character (at most 63 characters)"
        )
    return errs


def _references_errors(meta: dict[str, Any]) -> Causes:
    """finalizers and ownerReferences drive deletion and the GC: their shape must hold."""
    causes: Causes = []
    finalizers = meta.get("finalizers")
    if finalizers is not None and (
        not isinstance(finalizers, list) or not all(isinstance(f, str) and f for f in finalizers)
    ):
        causes.append(("metadata.finalizers", "Invalid value: must be a list of names"))
    owners = meta.get("ownerReferences")
    if owners is not None:
        if not isinstance(owners, list):
            return [*causes, ("metadata.ownerReferences", "Invalid value: must be a list")]
        for i, ref in enumerate(owners):
            where = f"metadata.ownerReferences[{i}]"
            if not isinstance(ref, dict):
                causes.append((where, "Invalid value: must be an object"))
                continue
            for field in ("apiVersion", "kind", "name", "uid"):
                if not isinstance(ref.get(field), str) or not ref.get(field):
                    causes.append((f"{where}.{field}", "Required value"))
            for flag in ("controller", "blockOwnerDeletion"):
                if flag in ref and not isinstance(ref[flag], bool | None):
                    causes.append((f"{where}.{flag}", "Invalid value: must be a boolean"))
    return causes


def metadata_errors(rt: ResourceType, meta: dict[str, Any]) -> Causes:
    causes: Causes = _references_errors(meta)
    name = meta.get("name", "")
    if not isinstance(name, str) or not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    else:
        causes += [
            ("metadata.name", f'Invalid value: "{name}": {e}') for e in name_errors(rt, name)
        ]
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return [*causes, ("metadata.labels", "Invalid value: must be a map of strings")]
    for k, v in labels.items():
        for e in _qualified_name_errors(k):
            causes.append(("metadata.labels", f'Invalid value: "{k}": {e}'))
        if not isinstance(v, str):
            causes.append((f"metadata.labels.{k}", "Invalid value: must be a string"))
        elif len(v) > 63 or (v and not _LABEL_NAME.match(v)):
            causes.append(
                (
                    "metadata.labels",
                    f'Invalid value: "{v}": a valid label must be an empty string or consist of '
                    "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character (at most 63 characters)",
                )
            )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        return [*causes, ("metadata.annotations", "Invalid value: must be a map of strings")]
    size = 0
    for k, v in annotations.items():
        for e in _qualified_name_errors(k):
            causes.append(("metadata.annotations", f'Invalid value: "{k}": {e}'))
        if not isinstance(v, str):
            causes.append((f"metadata.annotations.{k}", "Invalid value: must be a string"))
            continue
        size += len(k) + len(v)
    if size > _MAX_ANNOTATIONS:
        causes.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))
    return causes


def has_spec(rt: ResourceType) -> bool:
    """Kinds whose generation counts changes to everything but metadata and status."""
    return rt.custom or rt.plural in {"pods", "deployments", "replicasets", "services", "nodes"}


# --- per-kind defaulting (in place) and validation -----------------------------------------


def _lists(spec: dict[str, Any], *fields: str) -> list[Any]:
    """The items of the list fields that are lists (validation reports the others)."""
    out: list[Any] = []
    for f in fields:
        value = spec.get(f)
        if isinstance(value, list):
            out += value
    return out


def _pod_spec_defaults(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
    for c in _lists(spec, "containers", "initContainers"):
        if not isinstance(c, dict):
            continue
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("resources", {})
        image = str(c.get("image", ""))
        tagless = ":" not in image.rsplit("/", 1)[-1]
        c.setdefault(
            "imagePullPolicy",
            "Always" if tagless or image.endswith(":latest") else "IfNotPresent",
        )
        ports = c.get("ports")
        for p in ports if isinstance(ports, list) else []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")


def _pod_spec_errors(spec: Any, path: str) -> Causes:
    if not isinstance(spec, dict):
        return [(path, "Required value")]
    causes: Causes = []
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [(f"{path}.containers", "Required value")]
    seen: set[str] = set()
    init = spec.get("initContainers")
    if init is not None and not isinstance(init, list):
        causes.append((f"{path}.initContainers", "Invalid value: must be a list"))
    for i, c in enumerate(_lists(spec, "containers", "initContainers")):
        cp = f"{path}.containers[{i}]"
        if not isinstance(c, dict):
            causes.append((cp, "Invalid value: must be an object"))
            continue
        name = c.get("name")
        if not isinstance(name, str) or not name:
            causes.append((f"{cp}.name", "Required value"))
        elif not _DNS1123_LABEL.match(name):
            causes.append((f"{cp}.name", f'Invalid value: "{name}": must be a DNS-1123 label'))
        elif name in seen:
            causes.append((f"{cp}.name", f'Duplicate value: "{name}"'))
        else:
            seen.add(name)
        if not c.get("image"):
            causes.append((f"{cp}.image", "Required value"))
    policy = spec.get("restartPolicy")
    if policy not in ("Always", "OnFailure", "Never"):
        causes.append(
            (
                f"{path}.restartPolicy",
                f'Unsupported value: "{policy}": supported values: "Always", "OnFailure", "Never"',
            )
        )
    return causes


def _pod(obj: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    spec = obj.setdefault("spec", {})
    if isinstance(spec, dict):
        _pod_spec_defaults(spec)
    if old is None:
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    return _pod_spec_errors(spec, "spec")


def _int_or_percent(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and re.fullmatch(r"\d{1,3}%", value) is not None


def _workload(obj: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return [("spec", "Invalid value: must be an object")]
    spec.setdefault("replicas", 1)
    if obj.get("kind") == "Deployment":
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if not isinstance(strategy, dict):
            return [("spec.strategy", "Invalid value: must be an object")]
        if strategy.get("type") == "RollingUpdate":
            strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
    causes: Causes = []
    for field in ("replicas", "revisionHistoryLimit", "progressDeadlineSeconds", "minReadySeconds"):
        value = spec.get(field)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            causes.append((f"spec.{field}", f"Invalid value: {value!r}: must be an integer >= 0"))
    rolling = (spec.get("strategy") or {}).get("rollingUpdate")
    if isinstance(rolling, dict):
        for field in ("maxSurge", "maxUnavailable"):
            value = rolling.get(field)
            if value is not None and not _int_or_percent(value):
                causes.append(
                    (
                        f"spec.strategy.rollingUpdate.{field}",
                        f"Invalid value: {value!r}: must be an integer or a percentage",
                    )
                )
    elif rolling is not None:
        causes.append(("spec.strategy.rollingUpdate", "Invalid value: must be an object"))
    if causes:
        return causes
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        causes.append(
            ("spec.replicas", f"Invalid value: {replicas!r}: must be greater than or equal to 0")
        )
    selector = spec.get("selector")
    template = spec.get("template") or {}
    if not isinstance(template, dict) or not isinstance(template.get("metadata") or {}, dict):
        return [*causes, ("spec.template", "Invalid value: must be an object with metadata")]
    labels = (template.get("metadata") or {}).get("labels") or {}
    parsed: LabelSelector | None = None
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        causes.append(("spec.selector", "Required value"))
    else:
        try:
            parsed = LabelSelector.from_dict(selector)
        except SelectorError as exc:
            causes.append(("spec.selector", f"Invalid value: {exc}"))
    if parsed is not None and not parsed.matches(labels if isinstance(labels, dict) else {}):
        causes.append(
            (
                "spec.template.metadata.labels",
                f"Invalid value: {labels}: `selector` does not match template `labels`",
            )
        )
    if old is not None and old.get("spec", {}).get("selector") != selector:
        causes.append(("spec.selector", "Invalid value: field is immutable"))
    tspec = template.get("spec")
    if isinstance(tspec, dict):
        _pod_spec_defaults(tspec)
    causes += _pod_spec_errors(tspec, "spec.template.spec")
    return causes


def _namespace(obj: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    if old is None:
        if obj.get("spec") is None:
            obj["spec"] = {}
        obj["spec"].setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    labels = obj["metadata"].setdefault("labels", {})
    if isinstance(labels, dict):
        labels["kubernetes.io/metadata.name"] = obj["metadata"].get("name", "")
    return []


def _secret(obj: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    obj.setdefault("type", "Opaque")
    causes: Causes = []
    data = obj.get("data") or {}
    string_data = obj.pop("stringData", None) or {}
    if not isinstance(data, dict) or not isinstance(string_data, dict):
        return [("data", "Invalid value: must be a map of strings")]
    for k, v in data.items():
        if not _CONFIG_KEY.match(k):
            causes.append(
                (
                    f"data[{k}]",
                    f'Invalid value: "{k}": a valid config key must '
                    "consist of alphanumeric characters, '-', '_' or '.'",
                )
            )
        try:
            base64.b64decode(str(v), validate=True)
        except (binascii.Error, ValueError):
            causes.append(
                (f"data[{k}]", "Invalid value: <secret contents redacted>: illegal base64 data")
            )
    for k, v in string_data.items():
        data[k] = base64.b64encode(str(v).encode()).decode()
    if data:
        obj["data"] = data
    if (
        old is not None
        and old.get("immutable")
        and (old.get("data") != obj.get("data") or old.get("type") != obj.get("type"))
    ):
        causes.append(("data", "Forbidden: field is immutable when `immutable` is set"))
    return causes


def _configmap(obj: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    causes: Causes = []
    for field in ("data", "binaryData"):
        values = obj.get(field) or {}
        if not isinstance(values, dict):
            causes.append((field, "Invalid value: must be a map"))
            continue
        for k, v in values.items():
            if not _CONFIG_KEY.match(k):
                causes.append(
                    (
                        f"{field}[{k}]",
                        f'Invalid value: "{k}": a valid config key must '
                        "consist of alphanumeric characters, '-', '_' or '.'",
                    )
                )
            if field == "data" and not isinstance(v, str):
                causes.append((f"{field}[{k}]", "Invalid value: must be a string"))
    if old is not None and old.get("immutable") and old.get("data") != obj.get("data"):
        causes.append(("data", "Forbidden: field is immutable when `immutable` is set"))
    return causes


def _service(obj: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return [("spec", "Invalid value: must be an object")]
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    causes: Causes = []
    ports = spec.get("ports") or []
    if not isinstance(ports, list):
        return [("spec.ports", "Invalid value: must be a list")]
    for i, p in enumerate(ports):
        if not isinstance(p, dict) or not isinstance(p.get("port"), int):
            causes.append((f"spec.ports[{i}].port", "Required value"))
            continue
        p.setdefault("protocol", "TCP")
        p.setdefault("targetPort", p["port"])
    if old is None:
        obj.setdefault("status", {"loadBalancer": {}})
    return causes


KindHook = Callable[[dict[str, Any], dict[str, Any] | None], Causes]

HOOKS: dict[tuple[str, str], KindHook] = {
    ("", "pods"): _pod,
    ("apps", "deployments"): _workload,
    ("apps", "replicasets"): _workload,
    ("", "namespaces"): _namespace,
    ("", "secrets"): _secret,
    ("", "configmaps"): _configmap,
    ("", "services"): _service,
}


def admit(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    """Default ``obj`` in place and return what is invalid about it (empty: admitted)."""
    causes = metadata_errors(rt, obj["metadata"])
    if not rt.custom:  # custom resources have their own schema for this
        for field in ("spec", "status"):
            if field in obj and obj[field] is not None and not isinstance(obj[field], dict):
                causes.append((field, f"Invalid value: {obj[field]!r}: must be an object"))
        if causes:
            return causes
    hook = HOOKS.get((rt.group, rt.plural))
    if hook is not None:
        causes += hook(obj, old)
    return causes
