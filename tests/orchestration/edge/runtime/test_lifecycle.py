"""Stopping pods gracefully, and adopting their processes across runtime restarts."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from orbiter.orchestration.edge.runtime import ProcessRuntime, processes

from .conftest import MakeRuntime
from .support import (
    StatusLog,
    alive,
    container,
    container_root,
    cstatus,
    eventually,
    make_pod,
    pid_of,
    resolve,
    running,
    start_ticks,
    state,
)

TRAP = (
    "import os, signal, sys, time\n"
    "def term(*_):\n"
    "    open(os.environ['MARKER'], 'w').write('got SIGTERM')\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "open('up', 'w').close()\n"
    "while True:\n    time.sleep(1)\n"
)
IGNORE = (
    "import os, signal, subprocess, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = subprocess.Popen(['sleep', '600'])\n"
    "open('child.tmp', 'w').write(str(child.pid)); os.rename('child.tmp', 'child')\n"
    "while True:\n    time.sleep(1)\n"
)
UNTIL_STOP = (
    "import os, sys, time\nwhile not os.path.exists('stop'):\n    time.sleep(0.02)\nsys.exit(7)\n"
)


def _file(path: Path) -> None:
    assert path.exists()


async def test_graceful_stop_sends_sigterm(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    marker = tmp_path / "marker"
    app = container("app", TRAP, env=[{"name": "MARKER", "value": str(marker)}])
    await rt.sync_pod(make_pod("term-1", [app]), resolve)
    await statuses.wait("term-1", running("app"))
    await eventually(lambda: _file(container_root(rt, "term-1", "app") / "up"))
    await rt.kill_pod("term-1", 10)
    assert marker.read_text() == "got SIGTERM"
    final = statuses.history[-1][1]
    term = cstatus(final, "app")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert final["phase"] == "Succeeded"


async def test_sigkill_after_the_grace_period(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    await rt.sync_pod(make_pod("kill-1", [container("app", IGNORE)], grace=0.5), resolve)
    status = await statuses.wait("kill-1", running("app"))
    pid = pid_of(status, "app")
    child_file = container_root(rt, "kill-1", "app") / "child"
    await eventually(lambda: _file(child_file))
    child = int(child_file.read_text())
    loop = asyncio.get_running_loop()
    began = loop.time()
    await rt.kill_pod("kill-1")  # the pod's own grace period: 0.5 s
    assert loop.time() - began >= 0.5
    term = cstatus(statuses.history[-1][1], "app")["state"]["terminated"]
    assert (term["exitCode"], term["signal"]) == (137, 9)
    assert not alive(pid) and not alive(child)  # the whole process group went


async def test_deleted_pod_is_stopped_by_sync(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    pod = make_pod("del-1", [container("app", "import time; time.sleep(600)")], grace=0.3)
    await rt.sync_pod(pod, resolve)
    await statuses.wait("del-1", running("app"))
    pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    pod["metadata"]["deletionGracePeriodSeconds"] = 5
    await rt.sync_pod(pod, resolve)
    status = await statuses.wait("del-1", lambda s: s["phase"] == "Failed")
    assert cstatus(status, "app")["state"]["terminated"]["exitCode"] == 143
    assert cstatus(status, "app")["restartCount"] == 0


@pytest.mark.parametrize("pidfds", [True, False], ids=["pidfd", "polling"])
async def test_adoption_keeps_processes_and_learns_their_exit(
    make_runtime: MakeRuntime, monkeypatch: pytest.MonkeyPatch, pidfds: bool
) -> None:
    if not pidfds:  # as on Linux < 5.3: exits are noticed by polling /proc

        def no_pidfd(pid: int, flags: int = 0) -> int:
            raise OSError(errno.ENOSYS, "pidfd_open")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
        monkeypatch.setattr(processes, "POLL_INTERVAL", 0.05)
    first = await make_runtime()
    statuses = StatusLog(first)
    pod = make_pod("adopt-1", [container("app", UNTIL_STOP)], restart="Never")
    await first.sync_pod(pod, resolve)
    before = await statuses.wait("adopt-1", running("app"))
    pid = pid_of(before, "app")
    start = start_ticks(pid)
    with pytest.raises(RuntimeError, match="another runtime"):
        await ProcessRuntime(first.root).start()  # one runtime per root at a time
    await first.close()
    assert alive(pid)  # closing the runtime left the pod running (edge autonomy)

    second = await make_runtime()
    statuses = StatusLog(second)
    after = second.pod_status("adopt-1")
    assert state(after, "app") == "running" and after["phase"] == "Running"
    assert pid_of(after, "app") == pid
    assert start_ticks(pid) == start  # the very same process, not a reused pid
    assert cstatus(after, "app")["restartCount"] == 0
    assert after["startTime"] == before["startTime"]
    assert set(second.running_pods()) == {"adopt-1"}
    (container_root(second, "adopt-1", "app") / "stop").touch()
    done = await statuses.wait("adopt-1", lambda s: s["phase"] == "Failed")
    term = cstatus(done, "app")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (7, "Error")
    assert term["containerID"] == f"process://{pid}"


async def test_pod_that_died_while_no_runtime_ran_is_restarted(
    make_runtime: MakeRuntime, tmp_path: Path
) -> None:
    first = await make_runtime()
    statuses = StatusLog(first)
    # each run records the secret it got: the restart happens before any edge resolver is back
    code = (
        "import os, time\n"
        "open(os.environ['OUT'], 'a').write(os.environ['PASSWORD'] + '\\n')\n"
        "time.sleep(600)\n"
    )
    out = tmp_path / "passwords"
    env = [
        {"name": "OUT", "value": str(out)},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
    ]
    await first.sync_pod(make_pod("dead-1", [container("app", code, env=env)]), resolve)
    before = await statuses.wait("dead-1", running("app"))
    pid = pid_of(before, "app")

    def first_run_got_the_secret() -> None:
        assert out.exists() and out.read_text().split() == ["s3cret"]

    await eventually(first_run_got_the_secret)
    await first.close()
    os.kill(pid, signal.SIGKILL)

    def gone() -> None:
        assert not alive(pid)

    await eventually(gone)

    second = await make_runtime()
    statuses = StatusLog(second)
    status = await statuses.wait(
        "dead-1", lambda s: cstatus(s, "app")["restartCount"] == 1 and state(s, "app") == "running"
    )
    last = cstatus(status, "app")["lastState"]["terminated"]
    assert (last["exitCode"], last["signal"]) == (137, 9)
    assert last["containerID"] == f"process://{pid}"
    assert pid_of(status, "app") != pid

    def both_runs_got_the_secret() -> None:
        assert out.exists() and out.read_text().split() == ["s3cret", "s3cret"]

    await eventually(both_runs_got_the_secret)
    assert stat.S_IMODE((second.root / "pods/dead-1/resolved.json").stat().st_mode) == 0o600


async def test_adopted_probes_and_restarts_keep_working(make_runtime: MakeRuntime) -> None:
    first = await make_runtime()
    statuses = StatusLog(first)
    probe = {
        "exec": {"command": ["python", "-c", "import os, sys; sys.exit(os.path.exists('sick'))"]},
        "periodSeconds": 0.1,
        "failureThreshold": 1,
    }
    app = container("app", "import time; time.sleep(600)", livenessProbe=probe)
    await first.sync_pod(make_pod("adopt-2", [app], grace=0.2), resolve)
    await statuses.wait("adopt-2", lambda s: cstatus(s, "app")["ready"])
    await first.close()

    second = await make_runtime()
    statuses = StatusLog(second)
    assert cstatus(second.pod_status("adopt-2"), "app")["started"] is True
    (container_root(second, "adopt-2", "app") / "sick").touch()
    status = await statuses.wait("adopt-2", lambda s: cstatus(s, "app")["restartCount"] == 1)
    assert cstatus(status, "app")["lastState"]["terminated"]["exitCode"] == 143


EDGECORE = """
import asyncio, json, os, sys
from orbiter.orchestration.edge.runtime import ProcessRuntime

async def main() -> None:
    rt = ProcessRuntime(sys.argv[1])
    await rt.start()
    pod = json.loads(sys.argv[2])
    await rt.sync_pod(pod, lambda kind, namespace, name: None)
    uid = pod["metadata"]["uid"]
    while "running" not in rt.pod_status(uid)["containerStatuses"][0]["state"]:
        await asyncio.sleep(0.02)
    print(json.dumps(rt.pod_status(uid)), flush=True)
    os._exit(0)  # crash: no close(), no clean-up

asyncio.run(main())
"""


async def test_adoption_from_another_process(make_runtime: MakeRuntime, tmp_path: Path) -> None:
    """The real case: the EdgeCore that started the pod is gone, its wrappers are nobody's
    children any more, and a new EdgeCore adopts them."""
    root = tmp_path / "runtime"
    pod = make_pod("other-1", [container("app", UNTIL_STOP)], restart="Never")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", EDGECORE, str(root), json.dumps(pod)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    pid = pid_of(json.loads(done.stdout), "app")
    assert alive(pid)
    rt = await make_runtime()
    statuses = StatusLog(rt)
    assert pid_of(rt.pod_status("other-1"), "app") == pid
    assert state(rt.pod_status("other-1"), "app") == "running"
    (container_root(rt, "other-1", "app") / "stop").touch()
    final = await statuses.wait("other-1", lambda s: s["phase"] == "Failed")
    assert cstatus(final, "app")["state"]["terminated"]["exitCode"] == 7
