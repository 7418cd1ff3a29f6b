"""Container processes: spawned under the wrapper (see ``wrapper.py``), watched through a
pidfd (or by polling /proc where pidfds are missing), signalled, and adopted again by a new
runtime after EdgeCore restarts.

Identity is (pid, start time in clock ticks from /proc/<pid>/stat), persisted by the pod, so
a pid the kernel handed to another process since is never mistaken for the wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .launching import LaunchSpec

log = logging.getLogger(__name__)

WRAPPER = str(Path(__file__).with_name("wrapper.py"))
_FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1}
POLL_INTERVAL = 0.5  # only without pidfds (Linux < 5.3): how often /proc is checked
KILL_WAIT = 10.0  # after SIGKILL was asked of the wrapper, how long before it is bypassed
START_TIMEOUT = 30.0  # the wrapper reports within milliseconds; this means it is wedged


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    reason: str
    message: str
    started_at: float | None
    finished_at: float
    signal: int | None = None  # the signal that ended it


@dataclass(frozen=True)
class RunInfo:
    """One container run, as persisted: where its files are and who its wrapper is."""

    attempt: int
    dir: str
    wrapper_pid: int
    wrapper_start: int

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "dir": self.dir,
            "wrapperPid": self.wrapper_pid,
            "wrapperStart": self.wrapper_start,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunInfo:
        return cls(
            int(data["attempt"]),
            str(data["dir"]),
            int(data["wrapperPid"]),
            int(data["wrapperStart"]),
        )


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks since boot), or None when there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[19])


def is_alive(pid: int, start: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[1] == start and stat[0] not in ("Z", "X")


def reap(pid: int, start: int) -> None:
    """Collect a wrapper that is this process's child (the runtime that started it), and
    only that process, should its pid have gone to another child since."""
    stat = proc_stat(pid)
    if stat is not None and stat[1] == start:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Any, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except (OSError, AttributeError):  # old kernel, or a seccomp filter: poll /proc instead
        return None


class ProcessHandle:
    """A running wrapper and its container; ``exited`` resolves with the container's exit."""

    def __init__(self, run: RunInfo, pidfd: int | None) -> None:
        self.run = run
        self.dir = Path(run.dir)
        self._pidfd = pidfd
        self._loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[ExitInfo] = self._loop.create_future()
        self._poller: asyncio.Task[None] | None = None
        self._container: dict[str, Any] | None = None
        if pidfd is not None:
            self._loop.add_reader(pidfd, self._finish)
        else:
            self._poller = self._loop.create_task(self._poll())

    @property
    def container(self) -> dict[str, Any] | None:
        """``container.json``: the container's pid, its /proc start time and start."""
        if self._container is None:
            self._container = read_json(self.dir / "container.json")
        return self._container

    @property
    def pid(self) -> int | None:
        c = self.container
        return int(c["pid"]) if c else None

    def send(self, sig: int) -> None:
        """Signal the wrapper (it forwards to the container's group; SIGUSR1 = SIGKILL)."""
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif is_alive(self.run.wrapper_pid, self.run.wrapper_start):
                os.kill(self.run.wrapper_pid, sig)

    async def stop(self, grace: float) -> ExitInfo:
        """SIGTERM to the container's process group, SIGKILL after ``grace`` seconds."""
        self.send(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self.exited), max(grace, 0.0))
        self.send(signal.SIGUSR1)
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self.exited), KILL_WAIT)
        log.warning(
            "wrapper %d ignores signals; killing it and its container", self.run.wrapper_pid
        )
        _kill_container(self.dir)
        self.send(signal.SIGKILL)
        return await asyncio.shield(self.exited)

    def detach(self) -> None:
        """Stop watching and leave the processes running (the runtime is closing)."""
        self._unwatch()
        if not self.exited.done():
            self.exited.cancel()

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    def _finish(self) -> None:
        self._unwatch()
        reap(self.run.wrapper_pid, self.run.wrapper_start)
        if not self.exited.done():
            self.exited.set_result(collect_exit(self.dir))

    async def _poll(self) -> None:
        while is_alive(self.run.wrapper_pid, self.run.wrapper_start):  # noqa: ASYNC110
            await asyncio.sleep(POLL_INTERVAL)
        self._poller = None
        self._finish()


def _kill_container(run_dir: Path) -> None:
    """SIGKILL the container's group directly, if its leader is still the process started."""
    c = read_json(run_dir / "container.json")
    if c and is_alive(int(c["pid"]), int(c["start"])):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(c["pid"]), signal.SIGKILL)


def collect_exit(run_dir: Path) -> ExitInfo:
    """How the container ended, from ``exit.json``; a wrapper that died without writing it
    (killed from outside) leaves a container kubelet would call ContainerStatusUnknown, and
    anything of it still running is killed so it cannot linger unsupervised."""
    data = read_json(run_dir / "exit.json")
    if data is not None:
        return ExitInfo(
            int(data.get("exitCode", 0)),
            str(data.get("reason", "")),
            str(data.get("message", "")),
            data.get("startedAt"),
            float(data.get("finishedAt") or time.time()),
            data.get("signal"),
        )
    _kill_container(run_dir)
    c = read_json(run_dir / "container.json")
    message = "The container could not be located when the pod was terminated"
    with contextlib.suppress(OSError):
        tail = (run_dir / "wrapper.log").read_bytes()[-500:].decode(errors="replace").strip()
        if tail:
            message = f"the container's wrapper failed: {tail}"
    started = c.get("startedAt") if c else None
    return ExitInfo(137, "ContainerStatusUnknown", message, started, time.time(), signal.SIGKILL)


async def spawn(
    run_dir: Path,
    attempt: int,
    spec: LaunchSpec,
    log_path: Path,
    spawned: Callable[[ProcessHandle], None],
) -> ProcessHandle:
    """Start a container under a new wrapper. ``spawned`` gets the handle before anything is
    awaited, so a runtime cancelled mid-start still knows (and persists) the process."""
    pid, r = _spawn_wrapper(run_dir, spec, log_path)
    stat = proc_stat(pid)
    handle = ProcessHandle(RunInfo(attempt, str(run_dir), pid, stat[1] if stat else 0), _pidfd(pid))
    spawned(handle)
    try:
        await asyncio.wait_for(_read_to_eof(r), START_TIMEOUT)
    except TimeoutError:
        log.warning("wrapper %d did not report within %ss; killing it", pid, START_TIMEOUT)
        handle.send(signal.SIGKILL)
    return handle


def _spawn_wrapper(run_dir: Path, spec: LaunchSpec, log_path: Path) -> tuple[int, int]:
    """posix_spawn the wrapper (milliseconds, so fine on the event loop); its pid and the
    read end of its report pipe."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("exit.json", "container.json"):
        (run_dir / stale).unlink(missing_ok=True)
    launch = {
        "argv": spec.argv,
        "env": spec.env,
        "cwd": spec.cwd,
        "rlimits": spec.rlimits,
        "log": str(log_path),
    }
    write_json(run_dir / "launch.json", launch, mode=0o600)  # resolved secrets: owner only
    r, w = os.pipe()
    try:
        if w == 3:  # dup2(3, 3) would keep close-on-exec set
            w, old = os.dup(w), w
            os.close(old)
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", WRAPPER, str(run_dir)],
            {},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (
                    os.POSIX_SPAWN_OPEN,
                    1,
                    str(run_dir / "wrapper.log"),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                    0o600,
                ),
                (os.POSIX_SPAWN_DUP2, 1, 2),
                (os.POSIX_SPAWN_DUP2, w, 3),
            ],
            setsid=True,  # its own session: it outlives EdgeCore and gets no terminal signals
            setsigmask=_FORWARDED,  # blocked until its handlers are in place
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return pid, r


async def _read_to_eof(fd: int) -> None:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def adopt(run: RunInfo) -> ProcessHandle | None:
    """Watch a wrapper a previous runtime started; None when it is gone (or its pid now
    belongs to another process), in which case ``collect_exit`` says how it ended."""
    try:
        pidfd = _pidfd(run.wrapper_pid)
    except ProcessLookupError:
        return None
    # checked after opening the pidfd: from now on the pidfd pins this very process
    if not is_alive(run.wrapper_pid, run.wrapper_start):
        if pidfd is not None:
            os.close(pidfd)
        reap(run.wrapper_pid, run.wrapper_start)  # our own zombie, if this process started it
        return None
    return ProcessHandle(run, pidfd)


async def wait_exit(pid: int) -> None:
    """Until a child process exits (it is left for the caller to reap)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        while (stat := proc_stat(pid)) is not None and stat[0] not in ("Z", "X"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
