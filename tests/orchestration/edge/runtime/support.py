"""Building pods, and waiting on what the runtime reports (never on the clock)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from orbiter.orchestration.edge.runtime import ProcessRuntime

T = TypeVar("T")
Status = dict[str, Any]

OBJECTS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("ConfigMap", "default", "cfg"): {"data": {"greeting": "hello", "mode": "fast"}},
    ("Secret", "default", "creds"): {"data": {"password": base64.b64encode(b"s3cret").decode()}},
}


def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    return OBJECTS.get((kind, namespace, name))


def py(code: str) -> list[str]:
    return ["python", "-c", code]


def container(name: str, code: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "python", "command": py(code), **fields}


def make_pod(
    uid: str,
    containers: list[dict[str, Any]],
    *,
    restart: str = "Always",
    init: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    grace: float = 5,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "containers": containers,
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": grace,
        "nodeName": "edge-1",
        "serviceAccountName": "default",
        **spec,
    }
    if init:
        body["initContainers"] = init
    if volumes:
        body["volumes"] = volumes
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod-{uid}",
            "namespace": "default",
            "uid": uid,
            "labels": {"app": "demo"},
            "annotations": {"note": "hi"},
        },
        "spec": body,
    }


def cstatus(status: Status, name: str) -> Status:
    for c in status.get("containerStatuses", []) + status.get("initContainerStatuses", []):
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no status for container {name}: {status}")


def pid_of(status: Status, name: str) -> int:
    return int(cstatus(status, name)["containerID"].removeprefix("process://"))


def condition(status: Status, kind: str) -> str:
    return str(next(c["status"] for c in status["conditions"] if c["type"] == kind))


def state(status: Status, name: str) -> str:
    return str(next(iter(cstatus(status, name)["state"])))


def waiting_reason(status: Status, name: str) -> str | None:
    reason = cstatus(status, name)["state"].get("waiting", {}).get("reason")
    return None if reason is None else str(reason)


def running(name: str) -> Callable[[Status], bool]:
    return lambda s: state(s, name) == "running"


def container_root(rt: ProcessRuntime, uid: str, name: str) -> Path:
    return rt.root / "pods" / uid / "rootfs" / name


class StatusLog:
    """Every status the runtime reported, and waiting for one that satisfies a predicate."""

    def __init__(self, rt: ProcessRuntime) -> None:
        self.history: list[tuple[str, Status]] = []
        self._event = asyncio.Event()
        rt.on_status_change(self._record)

    def _record(self, uid: str, status: Status) -> None:
        self.history.append((uid, status))
        self._event.set()

    def mark(self) -> int:
        return len(self.history)

    def seen(self, uid: str, pred: Callable[[Status], bool], since: int = 0) -> bool:
        return any(u == uid and _holds(pred, s) for u, s in self.history[since:])

    async def wait(
        self, uid: str, pred: Callable[[Status], bool], within: float = 20.0, since: int = 0
    ) -> Status:
        checked = since
        try:
            async with asyncio.timeout(within):
                while True:
                    for u, s in self.history[checked:]:
                        if u == uid and _holds(pred, s):
                            return s
                    checked = len(self.history)
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            last = next((s for u, s in reversed(self.history) if u == uid), None)
            raise AssertionError(
                f"no status of {uid} matched within {within}s; last: {last}"
            ) from None


def _holds(pred: Callable[[Status], bool], status: Status) -> bool:
    try:
        return pred(status)
    except (AssertionError, KeyError, StopIteration, IndexError):
        return False


async def eventually(check: Callable[[], T], within: float = 20.0) -> T:
    """Poll ``check`` until it stops raising AssertionError (for what no event announces,
    like a process disappearing or a file appearing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return check()
        except AssertionError:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(0.02)


def start_ticks(pid: int) -> str:
    """When the process started (clock ticks since boot): a pid's identity."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def processes_under(root: Path) -> list[int]:
    """Live processes started for pods under ``root``: wrappers name their run directory on
    the command line, containers carry ORBITER_POD_DIR in their environment."""
    marker = str(root).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if (marker in cmdline or marker in environ) and alive(int(entry)):
            found.append(int(entry))
    return found
