"""Container logs: ``<root>/pods/<uid>/logs/<container>/<restart>.log``, stdout and stderr
interleaved as written (the wrapper hands the container the file itself, so logging costs
the runtime nothing and survives its restarts)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

FOLLOW_INTERVAL = 0.1  # the container appends without telling anyone: poll for growth
_CHUNK = 65536


def read_log(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


async def follow_log(path: Path, running: Callable[[], bool]) -> AsyncIterator[bytes]:
    """What the log holds, then what is appended, until the container run ends (as
    ``kubectl logs -f`` ends when the container terminates)."""
    offset = 0
    while True:
        alive = running()  # asked before reading, so nothing written before the exit is lost
        try:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(_CHUNK)
        except FileNotFoundError:
            data = b""
        if data:
            offset += len(data)
            yield data
            continue
        if not alive:
            return
        await asyncio.sleep(FOLLOW_INTERVAL)


def prune_runs(pod_dir: Path, name: str, attempt: int) -> None:
    """Before run ``attempt`` starts, drop the logs and run files of all but the previous run
    (kubelet keeps one dead container per container)."""
    for sub in ("logs", "run"):
        base = pod_dir / sub / name
        for old in base.glob("*") if base.exists() else []:
            n = old.name.split(".")[0]
            if n.isdigit() and int(n) < attempt - 1:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
