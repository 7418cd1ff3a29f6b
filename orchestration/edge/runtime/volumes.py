"""Volumes as directories of the pod, and mounts without a mount namespace.

Each volume lives at ``<pod>/volumes/<name>`` (``hostPath`` is the host path itself):
``configMap``, ``secret``, ``downwardAPI`` and ``projected`` are written as files (``items``,
``defaultMode``/``mode``; rewritten atomically when their source changes, as kubelet refreshes
them), ``emptyDir`` is an empty directory that lives as long as the pod.

A process cannot see a path like ``/etc/config``, so each container gets a root of its own,
``<pod>/rootfs/<container>``, its default working directory: every ``mountPath`` becomes a
symlink at that path inside this root (``/etc/config`` -> ``rootfs/<c>/etc/config``), and
``ORBITER_MOUNT_<VOLUME>`` names the volume's real directory (plus ``subPath``). Nothing is
ever written outside the runtime root except what a ``hostPath`` volume asks for.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .configuring import (
    ConfigError,
    as_bool,
    as_dict,
    as_list,
    as_str,
    dns_label,
    file_mode,
    relative_path,
)
from .downward import field_value, resource_value
from .environment import expand
from .sources import CONFIGMAP, SECRET, ObjectSource

DEFAULT_MODE = 0o644
_PROJECTED = ("configMap", "secret", "downwardAPI", "emptyDir", "hostPath", "projected")
_HOST_TYPES = {
    "": None,
    "DirectoryOrCreate": None,
    "FileOrCreate": None,
    "Directory": stat.S_ISDIR,
    "File": stat.S_ISREG,
    "Socket": stat.S_ISSOCK,
    "CharDevice": stat.S_ISCHR,
    "BlockDevice": stat.S_ISBLK,
}
Files = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


@dataclass(frozen=True)
class Volume:
    """Where a volume is, or why it could not be set up (reported by containers mounting it)."""

    name: str
    path: Path | None
    error: str | None = None


def mount_env_name(volume: str) -> str:
    return "ORBITER_MOUNT_" + re.sub(r"[^A-Za-z0-9]", "_", volume).upper()


async def set_up_volumes(
    pod: dict[str, Any], pod_dir: Path, source: ObjectSource
) -> dict[str, Volume]:
    """Create or refresh every volume; a broken one is recorded, not raised."""
    spec = as_dict(pod.get("spec"), "spec")
    out: dict[str, Volume] = {}
    for i, raw in enumerate(as_list(spec.get("volumes"), "spec.volumes")):
        where = f"spec.volumes[{i}]"
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue  # a nameless volume cannot be mounted, so no container can report it
        try:
            dns_label(name, f"{where}.name")
            out[name] = Volume(name, await _set_up(pod, pod_dir, name, as_dict(raw, where), source))
        except ConfigError as exc:
            out[name] = Volume(name, None, f'volume "{name}": {exc}')
        except OSError as exc:
            out[name] = Volume(name, None, f'volume "{name}": {exc.strerror}: {exc.filename}')
    return out


async def _set_up(
    pod: dict[str, Any], pod_dir: Path, name: str, spec: dict[str, Any], source: ObjectSource
) -> Path:
    kinds = [k for k in spec if k != "name"]
    kind = next((k for k in kinds if k in _PROJECTED), None)
    if kind is None:
        raise ConfigError(
            f"volume type {kinds[0] if kinds else '(none)'!r} is not supported "
            "by the process runtime (configMap, secret, downwardAPI, projected, "
            "emptyDir and hostPath are)"
        )
    body = as_dict(spec[kind], kind, default={})
    if kind == "hostPath":
        return _host_path(body)
    target = pod_dir / "volumes" / name
    if kind == "emptyDir":
        target.mkdir(parents=True, exist_ok=True)
        return target
    mode = file_mode(body.get("defaultMode"), f"{kind}.defaultMode", DEFAULT_MODE)
    files: Files = {}
    if kind == "projected":
        for j, src in enumerate(as_list(body.get("sources"), "projected.sources")):
            src = as_dict(src, f"projected.sources[{j}]")
            sub = next((k for k in ("configMap", "secret", "downwardAPI") if k in src), None)
            if sub is None:
                raise ConfigError(
                    f"projected.sources[{j}]: only configMap, secret and "
                    "downwardAPI sources are supported by the process runtime"
                )
            files.update(await _files(pod, sub, as_dict(src[sub], sub), mode, source))
    else:
        files = await _files(pod, kind, body, mode, source)
    write_files(target, files)
    return target


async def _files(
    pod: dict[str, Any], kind: str, body: dict[str, Any], mode: int, source: ObjectSource
) -> Files:
    items = [
        as_dict(it, f"{kind}.items[{i}]")
        for i, it in enumerate(as_list(body.get("items"), f"{kind}.items"))
    ]
    if kind == "downwardAPI":
        return {
            relative_path(it.get("path"), f"downwardAPI.items[{i}].path"): (
                _downward(pod, it).encode(),
                file_mode(it.get("mode"), f"downwardAPI.items[{i}].mode", mode),
            )
            for i, it in enumerate(items)
        }
    obj_kind = CONFIGMAP if kind == "configMap" else SECRET
    name = as_str(body.get("name" if kind == "configMap" else "secretName"), f"{kind}.name")
    optional = as_bool(body.get("optional"), f"{kind}.optional")
    data = await source.data(obj_kind, name, optional=optional) or {}
    if not items:
        return {relative_path(k, f"{kind} key"): (v, mode) for k, v in data.items()}
    files: Files = {}
    for i, it in enumerate(items):
        key = as_str(it.get("key"), f"{kind}.items[{i}].key")
        if key not in data:
            if optional:
                continue
            raise ConfigError(f"{kind} references non-existent {obj_kind.lower()} key: {key}")
        path = relative_path(it.get("path"), f"{kind}.items[{i}].path")
        files[path] = (data[key], file_mode(it.get("mode"), f"{kind}.items[{i}].mode", mode))
    return files


def _downward(pod: dict[str, Any], item: dict[str, Any]) -> str:
    if "fieldRef" in item:
        ref = as_dict(item["fieldRef"], "downwardAPI.items.fieldRef")
        return field_value(pod, as_str(ref.get("fieldPath"), "fieldRef.fieldPath"), volume=True)
    ref = as_dict(item.get("resourceFieldRef"), "downwardAPI.items.resourceFieldRef")
    wanted = as_str(ref.get("containerName"), "resourceFieldRef.containerName")
    spec = as_dict(pod.get("spec"), "spec")
    for c in as_list(spec.get("containers"), "spec.containers"):
        if isinstance(c, dict) and c.get("name") == wanted:
            return resource_value(pod, c, ref)
    raise ConfigError(f'resourceFieldRef: container "{wanted}" not found')


def _host_path(body: dict[str, Any]) -> Path:
    path = as_str(body.get("path"), "hostPath.path")
    kind = as_str(body.get("type"), "hostPath.type", default="")
    if not path.startswith("/") or kind not in _HOST_TYPES:
        raise ConfigError(f'hostPath: invalid path "{path}" or type "{kind}"')
    host = Path(path)
    if kind == "DirectoryOrCreate":
        host.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not host.exists():
        host.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        host.touch(mode=0o644)
    check = _HOST_TYPES[kind]
    if check is not None:
        try:
            ok = check(host.stat().st_mode)
        except OSError:
            ok = False
        if not ok:
            raise ConfigError(f"hostPath type check failed: {path} is not a {kind}")
    return host


def write_files(target: Path, files: Files) -> None:
    """Make ``target`` hold exactly ``files``; each changed file is replaced atomically."""
    target.mkdir(parents=True, exist_ok=True)
    for rel, (data, mode) in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            current = path.stat()
            if stat.S_IMODE(current.st_mode) == mode and path.read_bytes() == data:
                continue
        except OSError:
            pass
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    for dirpath, _dirs, names in os.walk(target):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), target)
            if rel not in files:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, n))


def mount_volumes(
    root: Path,
    mounts: list[Any],
    path: str,
    volumes: Mapping[str, Volume],
    env: Mapping[str, str],
) -> tuple[dict[str, str], set[Path]]:
    """Expose a container's ``volumeMounts`` under its root: the env naming them, and the
    links made."""
    out: dict[str, str] = {}
    links: set[Path] = set()
    root.mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(mounts):
        where = f"{path}.volumeMounts[{i}]"
        mount = as_dict(raw, where)
        name = as_str(mount.get("name"), f"{where}.name")
        volume = volumes.get(name)
        if volume is None:
            raise ConfigError(f'{where}.name: Not found: "{name}" (no such volume in spec.volumes)')
        if volume.error is not None or volume.path is None:
            raise ConfigError(volume.error or f'volume "{name}" is not set up')
        target = volume.path
        sub = mount.get("subPath") or ""
        if mount.get("subPathExpr"):
            sub = expand(as_str(mount["subPathExpr"], f"{where}.subPathExpr"), env)
        if sub:
            target = target / relative_path(sub, f"{where}.subPath")
            if not target.exists():  # kubelet creates a missing subPath as a directory
                target.mkdir(parents=True)
        links.add(
            link_to(root, as_str(mount.get("mountPath"), f"{where}.mountPath"), target, where)
        )
        out[mount_env_name(name)] = str(target)
    return out, links


def make_working_dir(root: Path, cwd: Path, links: set[Path], where: str) -> None:
    """Create the working directory inside the container's root, or inside a volume it
    mounts, never through a symlink the container made (that could point anywhere)."""
    p = root
    for part in cwd.relative_to(root).parts:
        p = p / part
        if p in links:
            break
        if p.is_symlink():
            raise ConfigError(f"{where}: {p.relative_to(root)} is a symlink the container made")
    cwd.mkdir(parents=True, exist_ok=True)


def in_root(root: Path, container_path: str, where: str) -> Path:
    """A container path (absolute or relative) as a path under the container's root."""
    rel = posixpath.normpath("/" + container_path).lstrip("/")
    if "\x00" in container_path:
        raise ConfigError(f"{where}: Invalid value: contains a NUL byte")
    return root / rel if rel else root


def link_to(root: Path, mount_path: str, target: Path, where: str) -> Path:
    link = in_root(root, mount_path, where)
    if link == root:
        raise ConfigError(f'{where}.mountPath: Invalid value: "{mount_path}": cannot mount on "/"')
    # a component that is a symlink (another mount, or one the container made) would put
    # this link inside a volume, or anywhere at all
    for parent in reversed(link.relative_to(root).parents):
        p = root / parent
        if p != root and p.is_symlink():
            raise ConfigError(
                f'{where}.mountPath: "{mount_path}" is inside another mount (or a symlink), '
                "which the process runtime cannot nest"
            )
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if os.readlink(link) == str(target):
            return link
        link.unlink()
    elif link.is_dir():
        try:
            link.rmdir()  # an empty directory (say, an earlier workingDir) gives way
        except OSError as exc:
            raise ConfigError(
                f'{where}.mountPath: "{mount_path}" is already a non-empty '
                "directory in the container's root"
            ) from exc
    elif link.exists():
        raise ConfigError(
            f'{where}.mountPath: "{mount_path}" is already a file in the container\'s root'
        )
    os.symlink(target, link)
    return link
