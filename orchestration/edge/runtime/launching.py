"""From a container spec to what the wrapper executes: argv, env, working directory and the
resource limits the OS can enforce.

Enforced: ``limits.memory`` becomes RLIMIT_DATA, which since Linux 4.7 caps the private
writable memory (heap and anonymous mmaps) a process maps, close to what a memory cgroup
counts; RLIMIT_AS would also count reserved address space (thread stacks, allocator arenas)
and kill ordinary programs long before they use their limit. Past it, allocations fail
(Python raises MemoryError) instead of an OOM kill. ``limits.cpu`` is not enforced: there is
no per-process share without cgroups; it is only visible through ``resourceFieldRef``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .configuring import ConfigError, as_dict, as_list, as_str, as_strings, dns_label
from .environment import container_env, expand
from .images import ImageSpec, image_path
from .quantities import parse_quantity
from .sources import ObjectSource
from .volumes import Volume, in_root, make_working_dir, mount_volumes

MAX_ARG = 131072 - 1  # Linux MAX_ARG_STRLEN: one argument or NAME=value, without its NUL
# exec's whole budget for argv and env (pointers included), minus headroom for the wrapper
EXEC_BUDGET = max(os.sysconf("SC_ARG_MAX") - 65536, 65536)


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    rlimits: dict[str, int]


def command_line(
    container: dict[str, Any], path: str, image: ImageSpec, env: Mapping[str, str]
) -> list[str]:
    """Kubernetes' rules: ``command`` replaces the image's entrypoint and drops its default
    args; ``args`` alone replace only the default args; both expand ``$(VAR)``."""
    command = as_strings(container.get("command"), f"{path}.command")
    args = as_strings(container.get("args"), f"{path}.args")
    if command is None:
        command = list(image.command)
        if args is None:
            args = list(image.args)
    argv = [expand(a, env) for a in command + (args or [])]
    if not argv:
        raise ConfigError(f"{path}: no command specified (neither the pod nor the image has one)")
    return argv


def resource_limits(container: dict[str, Any], path: str) -> dict[str, int]:
    resources = as_dict(container.get("resources"), f"{path}.resources")
    out: dict[str, int] = {}
    for field in ("limits", "requests"):
        values = as_dict(resources.get(field), f"{path}.resources.{field}")
        for name, raw in values.items():
            try:
                value = parse_quantity(raw)
            except ValueError as exc:
                raise ConfigError(f"{path}.resources.{field}.{name}: {exc}") from exc
            if field == "limits" and name == "memory":
                if value <= 0:
                    raise ConfigError(f"{path}.resources.limits.memory: must be positive")
                out["RLIMIT_DATA"] = math.ceil(value)
    return out


def check_exec_size(argv: list[str], env: Mapping[str, str], path: str) -> None:
    """Refuse what exec would refuse with E2BIG, and say which part is too long."""
    total = 0
    for i, arg in enumerate(argv):
        size = len(arg.encode("utf-8", "surrogateescape"))
        if "\x00" in arg:
            raise ConfigError(f"{path}: command/args[{i}] contains a NUL byte")
        if size > MAX_ARG:
            raise ConfigError(
                f"{path}: command/args[{i}] is {size} bytes, over the {MAX_ARG}-byte limit of "
                "one exec argument"
            )
        total += size + 1 + 8
    for name, value in env.items():
        size = len(f"{name}={value}".encode("utf-8", "surrogateescape"))
        if "\x00" in value:
            raise ConfigError(f"{path}: env {name} contains a NUL byte")
        if size > MAX_ARG:
            raise ConfigError(
                f"{path}: env {name} is {size} bytes, over the {MAX_ARG}-byte limit of one "
                "exec argument"
            )
        total += size + 1 + 8
    if total > EXEC_BUDGET:
        raise ConfigError(
            f"{path}: command, args and env take {total} bytes, over the {EXEC_BUDGET} bytes "
            "exec accepts"
        )


async def prepare_launch(
    pod: dict[str, Any],
    name: str,
    path: str,
    container: dict[str, Any],
    image: ImageSpec,
    shim_dir: Path | None,
    source: ObjectSource,
    volumes: Mapping[str, Volume],
    pod_dir: Path,
) -> LaunchSpec:
    """Everything about starting one container, or the ConfigError kubelet would report."""
    dns_label(name, f"{path}.name")  # it names directories
    if not isinstance(container, dict):
        raise ConfigError(f"{path}: Invalid value: must be an object")
    pod_env = await container_env(pod, container, path, source)
    root = pod_dir / "rootfs" / name
    mounts = as_list(container.get("volumeMounts"), f"{path}.volumeMounts")
    mount_env, links = mount_volumes(root, mounts, path, volumes, pod_env)
    runtime_env = {
        "ORBITER_POD_DIR": str(pod_dir),
        "ORBITER_CONTAINER_ROOT": str(root),
        **mount_env,
    }
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    hostname = (spec or {}).get("hostname") or (meta or {}).get("name") or "localhost"
    env = {
        **image.env,
        "PATH": image_path(image, shim_dir),
        "HOSTNAME": str(hostname),
        "HOME": str(root),
        **pod_env,
        **runtime_env,  # the runtime's contract wins over what a pod sets
    }
    argv = command_line(container, path, image, {**pod_env, **runtime_env})
    working = as_str(container.get("workingDir"), f"{path}.workingDir", default="")
    cwd = in_root(root, working or image.working_dir, f"{path}.workingDir")
    make_working_dir(root, cwd, links, f"{path}.workingDir")
    check_exec_size(argv, env, path)
    return LaunchSpec(argv, env, str(cwd), resource_limits(container, path))
