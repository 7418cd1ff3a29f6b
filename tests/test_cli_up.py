"""``orbiter up``: a cloud and edge nodes as separate processes, stopped cleanly by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

WAIT = 90.0


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, from /proc/<pid>/task/*/children."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(p) for p in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += kids - found
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_until_kubeconfig(proc: subprocess.Popen[str]) -> str:
    """The kubeconfig path ``orbiter up`` prints once every node is Ready."""
    assert proc.stdout is not None
    result: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("kubeconfig: "):
                result.append(line.removeprefix("kubeconfig: ").strip())
                return

    # A thread, so a hung child fails the test by timeout instead of blocking readline.
    reader = threading.Thread(target=read)
    reader.start()
    reader.join(WAIT)
    if not result:
        proc.kill()
        reader.join()
        pytest.fail("orbiter up printed no kubeconfig")
    return result[0]


@pytest.mark.slow
def test_up_runs_two_nodes_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The second run finds the nodes' data dirs and runs them again (new ports, same nodes).
    for run in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "orbiter.cli", "up", "--edges", "2", "--data-dir", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            kubeconfig = read_until_kubeconfig(proc)
            children = descendants(proc.pid)
            assert len(children) >= 3, "the cloud and two edge nodes run as processes"
            out = subprocess.run(
                [
                    "kubectl",
                    "--kubeconfig",
                    kubeconfig,
                    "--cache-dir",
                    str(tmp_path / f"kube-cache-{run}"),
                    "get",
                    "nodes",
                    "--no-headers",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=WAIT,
            )
            rows = [line.split() for line in out.stdout.splitlines()]
            assert [(r[0], r[1]) for r in rows] == [("edge-0", "Ready"), ("edge-1", "Ready")]

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        deadline = time.monotonic() + 10
        while (left := [p for p in children if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the OS for exits: there is nothing to wait on
        assert not left, f"orbiter up left processes running: {left}"
