"""The parent of one container process: ``python -I -S wrapper.py RUN_DIR``.

The runtime starts this in a session of its own, with the signals it forwards blocked. It
reads (and deletes: it holds resolved secrets) ``RUN_DIR/launch.json``, starts the container
in a process group of its own, writes ``container.json`` (pid, /proc start time, start) and
closes fd 3 to tell the runtime; then it waits. Because it stays the container's parent, it
learns the exit status that a restarted EdgeCore, no longer anybody's parent, could not: it
writes ``exit.json`` before exiting, and the runtime watches the wrapper's pid for that.

SIGTERM, SIGINT, SIGHUP and SIGQUIT are forwarded to the container's process group and
SIGUSR1 becomes SIGKILL for it: the runtime signals the wrapper through a pidfd, so a reused
pid can never be hit, and the wrapper, which has not reaped the container yet (waitid with
WNOWAIT), knows its group id is still the container's. When the container's main process
exits, what is left of its group is killed, as a container runtime would tear down the
container's cgroup.

Standard library only, and nothing from the package: it must start fast and outlive upgrades.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

FORWARD = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGINT,
    signal.SIGHUP: signal.SIGHUP,
    signal.SIGQUIT: signal.SIGQUIT,
    signal.SIGUSR1: signal.SIGKILL,
}
REPORT_FD = 3


def write_json(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def report() -> None:
    with contextlib.suppress(OSError):
        os.close(REPORT_FD)


def main(run_dir: str) -> int:
    child: list[int] = []  # the container's pid (and process group), once started
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        sig = FORWARD[signal.Signals(signum)]
        if not child:
            pending.append(sig)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child[0], sig)

    for forwarded in FORWARD:
        signal.signal(forwarded, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(FORWARD))
    exit_path = os.path.join(run_dir, "exit.json")
    launch_path = os.path.join(run_dir, "launch.json")
    with open(launch_path) as f:
        spec = json.load(f)
    os.unlink(launch_path)

    def finished(
        code: int,
        reason: str,
        message: str = "",
        started: float | None = None,
        sig: int | None = None,
    ) -> int:
        write_json(
            exit_path,
            {
                "exitCode": code,
                "signal": sig,
                "reason": reason,
                "message": message,
                "startedAt": started,
                "finishedAt": time.time(),
            },
        )
        report()
        return 0

    if pending:  # stopped before it started
        return finished(128 + pending[0], "Error", "stopped before it started", sig=pending[0])
    limits = [(getattr(resource_module(), k), v) for k, v in spec["rlimits"].items()]

    def preexec() -> None:
        for which, value in limits:
            resource_module().setrlimit(which, (value, value))

    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        proc = subprocess.Popen(
            spec["argv"],
            env=spec["env"],
            cwd=spec["cwd"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            process_group=0,
            preexec_fn=preexec if limits else None,
            close_fds=True,
        )
    except FileNotFoundError as exc:
        argv0 = spec["argv"][0]
        if exc.filename == argv0 and "/" not in argv0:
            message = f'exec: "{argv0}": executable file not found in $PATH'
        else:
            message = f"exec: {exc.strerror}: {exc.filename}"
        return finished(128, "StartError", message)
    except (OSError, subprocess.SubprocessError) as exc:
        return finished(128, "StartError", f"exec: {exc}")
    finally:
        os.close(log)
    started = time.time()
    child.append(proc.pid)
    write_json(
        os.path.join(run_dir, "container.json"),
        {"pid": proc.pid, "start": start_ticks(proc.pid), "startedAt": started},
    )
    report()
    for pending_sig in pending:
        os.killpg(proc.pid, pending_sig)
    # WNOWAIT: the container stays a zombie, so its pid and group id cannot be reused while
    # signals are still being forwarded to them
    info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    assert info is not None
    signal.pthread_sigmask(signal.SIG_BLOCK, set(FORWARD))
    sig = None if info.si_code == os.CLD_EXITED else info.si_status
    code = info.si_status if sig is None else 128 + sig  # as a shell reports a signal
    reason = "Completed" if code == 0 else "Error"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the rest of the container's process group
    proc.wait()
    return finished(code, reason, started=started, sig=sig)


def resource_module() -> Any:
    import resource  # only containers with limits pay for it

    return resource


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
