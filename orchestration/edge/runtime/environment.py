"""A container's environment (``envFrom``, ``env`` with ``valueFrom``) and Kubernetes'
``$(VAR)`` expansion of env values, command and args."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .configuring import ConfigError, as_bool, as_dict, as_list, as_str, env_name, is_env_name
from .downward import field_value, resource_value
from .sources import CONFIGMAP, SECRET, ObjectSource


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$(VAR)`` becomes VAR's value when defined and stays as written otherwise; ``$$``
    is a literal ``$`` (kubernetes/third_party/forked/golang/expansion)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:  # unterminated: kept verbatim
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def text(value: bytes) -> str:
    """Bytes as an env value; surrogateescape carries non-UTF-8 bytes through exec intact."""
    return value.decode("utf-8", "surrogateescape")


async def container_env(
    pod: dict[str, Any], container: dict[str, Any], path: str, source: ObjectSource
) -> dict[str, str]:
    """The env a pod defines for a container, in kubelet's order: ``envFrom`` sources, then
    ``env`` entries (later wins); each value expands ``$(VAR)`` against what precedes it."""
    env: dict[str, str] = {}
    for i, raw in enumerate(as_list(container.get("envFrom"), f"{path}.envFrom")):
        where = f"{path}.envFrom[{i}]"
        src = as_dict(raw, where)
        prefix = as_str(src.get("prefix"), f"{where}.prefix", default="")
        if "configMapRef" in src:
            kind, ref = CONFIGMAP, as_dict(src["configMapRef"], f"{where}.configMapRef")
        elif "secretRef" in src:
            kind, ref = SECRET, as_dict(src["secretRef"], f"{where}.secretRef")
        else:
            raise ConfigError(f"{where}: must have configMapRef or secretRef")
        name = as_str(ref.get("name"), f"{where}.name")
        data = await source.data(kind, name, optional=as_bool(ref.get("optional"), where))
        for key, value in sorted((data or {}).items()):
            if is_env_name(prefix + key):  # kubelet skips invalid names (with an event)
                env[prefix + key] = text(value)
    for i, raw in enumerate(as_list(container.get("env"), f"{path}.env")):
        where = f"{path}.env[{i}]"
        entry = as_dict(raw, where)
        name = env_name(entry.get("name"), f"{where}.name")
        if entry.get("valueFrom") is None:
            env[name] = expand(as_str(entry.get("value"), f"{where}.value", default=""), env)
            continue
        if entry.get("value"):
            raise ConfigError(f"{where}.valueFrom: may not be specified when `value` is not empty")
        found = await _value_from(pod, container, as_dict(entry["valueFrom"], where), where, source)
        if found is not None:  # an optional reference to a missing key leaves the var unset
            env[name] = found
    return env


async def _value_from(
    pod: dict[str, Any],
    container: dict[str, Any],
    spec: dict[str, Any],
    where: str,
    source: ObjectSource,
) -> str | None:
    for field, kind in (("configMapKeyRef", CONFIGMAP), ("secretKeyRef", SECRET)):
        if field in spec:
            ref = as_dict(spec[field], f"{where}.valueFrom.{field}")
            name = as_str(ref.get("name"), f"{where}.valueFrom.{field}.name")
            key = as_str(ref.get("key"), f"{where}.valueFrom.{field}.key")
            optional = as_bool(ref.get("optional"), f"{where}.valueFrom.{field}.optional")
            value = await source.key(kind, name, key, optional=optional)
            return None if value is None else text(value)
    if "fieldRef" in spec:
        ref = as_dict(spec["fieldRef"], f"{where}.valueFrom.fieldRef")
        return field_value(pod, as_str(ref.get("fieldPath"), f"{where}.valueFrom.fieldRef"))
    if "resourceFieldRef" in spec:
        ref = as_dict(spec["resourceFieldRef"], f"{where}.valueFrom.resourceFieldRef")
        return resource_value(pod, container, ref)
    raise ConfigError(
        f"{where}.valueFrom: must have one of configMapKeyRef, secretKeyRef, "
        "fieldRef, resourceFieldRef"
    )
