"""Images of the process runtime: named environments a container's process runs in.

There is no registry and no pull: an image name maps to an ``ImageSpec`` the node was
configured with. The default ``python`` image is the interpreter EdgeCore itself runs in.
A container naming any other image waits with reason ``ErrImageNeverPull`` (kubelet's
reason for an image that is absent and may not be pulled, which is always the case here)
and a message naming the image; its pod stays Pending.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageSpec:
    """What an OCI image config would say: ``command`` is the ENTRYPOINT and ``args`` the CMD
    (Kubernetes' ``command``/``args`` override them), ``env`` comes before the pod's env,
    ``path`` directories go in front of PATH, and ``shims`` are executables the runtime
    writes (name -> program to exec) into a directory first on PATH."""

    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    path: tuple[str, ...] = ()
    shims: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    working_dir: str = ""


def python_image(executable: str | None = None) -> ImageSpec:
    """The interpreter EdgeCore runs in, reachable as ``python`` and ``python3``; a shim (not
    a symlink) keeps a virtualenv's site-packages, which Python finds from the path it was
    started by. Unbuffered, so ``kubectl logs -f`` sees prints as they happen."""
    exe = executable or sys.executable
    return ImageSpec(
        args=("python3",),
        env=MappingProxyType({"PYTHONUNBUFFERED": "1"}),
        path=(os.path.dirname(exe),),
        shims=MappingProxyType({"python": exe, "python3": exe}),
    )


def default_images() -> dict[str, ImageSpec]:
    return {"python": python_image()}


def image_key(images: Mapping[str, ImageSpec], name: str) -> str | None:
    """The configured image a container's ``image`` names: by exact name, else without its
    tag or digest (``python:3.11`` runs ``python``)."""
    if name in images:
        return name
    repo = name.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
    return repo if repo in images else None


def install_shims(images_dir: Path, name: str, image: ImageSpec) -> Path | None:
    """Write the image's shims; the directory to put first on PATH (None without shims)."""
    if not image.shims:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    bin_dir = images_dir / safe / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for shim, program in image.shims.items():
        path = bin_dir / shim
        body = f'#!/bin/sh\nexec {shlex.quote(program)} "$@"\n'
        try:
            if path.read_text() == body:
                continue
        except OSError:
            pass
        tmp = path.with_name(f".{shim}.tmp")
        tmp.write_text(body)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    return bin_dir


def image_path(image: ImageSpec, shim_dir: Path | None) -> str:
    base = image.env.get("PATH", DEFAULT_PATH)
    parts = ([str(shim_dir)] if shim_dir else []) + list(image.path) + [base]
    return ":".join(p for p in parts if p)
