"""Reading a pod spec defensively: every malformed field becomes a ``ConfigError`` whose
message names the field, which the pod reports as ``CreateContainerConfigError`` (as kubelet
does) instead of an exception escaping the runtime."""

from __future__ import annotations

import re
from typing import Any

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME_FORBIDDEN = re.compile(r"[=\x00]")


class ConfigError(Exception):
    """A container cannot be configured; the message says why (kubelet's
    ``CreateContainerConfigError``)."""


def as_dict(value: Any, path: str, *, default: dict[str, Any] | None = None) -> dict[str, Any]:
    if value is None and default is not None:
        return default
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: Invalid value: must be an object")
    return value


def as_list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: Invalid value: must be a list")
    return value


def as_str(value: Any, path: str, *, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        what = "Required value" if value is None else "Invalid value: must be a string"
        raise ConfigError(f"{path}: {what}")
    return value


def as_bool(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: Invalid value: must be a boolean")
    return value


def as_number(value: Any, path: str, *, default: float, minimum: float = 0.0) -> float:
    """Seconds and counts; fractions are accepted so tests can probe every 0.1 s."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: Invalid value: must be a number")
    if value < minimum:
        raise ConfigError(f"{path}: Invalid value: {value}: must be at least {minimum:g}")
    return float(value)


def as_strings(value: Any, path: str) -> list[str] | None:
    """``command`` and ``args``: None when absent, else a list of strings."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: Invalid value: must be a list of strings")
    return list(value)


def env_name(value: Any, path: str) -> str:
    name = as_str(value, path)
    if not name or _ENV_NAME_FORBIDDEN.search(name):
        raise ConfigError(f'{path}: Invalid value: "{name}": not a valid environment variable name')
    return name


def is_env_name(name: str) -> bool:
    return bool(name) and not _ENV_NAME_FORBIDDEN.search(name)


def dns_label(value: Any, path: str) -> str:
    name = as_str(value, path)
    if not DNS_LABEL.match(name):
        raise ConfigError(f'{path}: Invalid value: "{name}": must be a DNS-1123 label')
    return name


def relative_path(value: Any, path: str) -> str:
    """A path inside a volume: relative, without ``..`` (it must not escape)."""
    rel = as_str(value, path)
    parts = rel.split("/")
    if not rel or rel.startswith("/") or ".." in parts or "\x00" in rel:
        raise ConfigError(f'{path}: Invalid value: "{rel}": must be a relative path without ".."')
    return "/".join(p for p in parts if p and p != ".")


def file_mode(value: Any, path: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ConfigError(
            f"{path}: Invalid value: {value!r}: must be a file mode between 0 and 0777"
        )
    return value


def pod_containers(
    pod: dict[str, Any],
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]], list[str]]:
    """The init and app containers by name, in order, and what had to be skipped (entries
    without a usable name cannot even be reported in the status)."""
    spec = pod.get("spec")
    problems: list[str] = []
    if not isinstance(spec, dict):
        return [], [], ["spec: Invalid value: must be an object"]
    seen: set[str] = set()
    groups: list[list[tuple[str, dict[str, Any]]]] = []
    for field in ("initContainers", "containers"):
        group: list[tuple[str, dict[str, Any]]] = []
        items = spec.get(field)
        if items is not None and not isinstance(items, list):
            problems.append(f"spec.{field}: Invalid value: must be a list")
            items = []
        for i, c in enumerate(items or []):
            name = c.get("name") if isinstance(c, dict) else None
            if not isinstance(name, str) or not name:
                problems.append(f"spec.{field}[{i}].name: Required value")
            elif name in seen:
                problems.append(f'spec.{field}[{i}].name: Duplicate value: "{name}"')
            else:
                seen.add(name)
                group.append((name, c))
        groups.append(group)
    return groups[0], groups[1], problems


def container_path(pod: dict[str, Any], name: str) -> str:
    """``spec.containers[2]``: where error messages point."""
    spec = pod.get("spec")
    for field in ("initContainers", "containers"):
        items = spec.get(field) if isinstance(spec, dict) else None
        for i, c in enumerate(items if isinstance(items, list) else []):
            if isinstance(c, dict) and c.get("name") == name:
                return f"spec.{field}[{i}]"
    return f"spec.containers[{name}]"
