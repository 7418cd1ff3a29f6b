"""Liveness, readiness and startup probes against real processes."""

from __future__ import annotations

import socket
from typing import Any

from .conftest import MakeRuntime
from .support import (
    StatusLog,
    condition,
    container,
    container_root,
    cstatus,
    make_pod,
    pid_of,
    resolve,
    running,
    state,
)

SLEEP = "import time; time.sleep(600)"


def exists(path: str, **timing: Any) -> dict[str, Any]:
    """An exec probe that passes while ``path`` (relative to the working directory) exists."""
    code = f"import os, sys; sys.exit(0 if os.path.exists({path!r}) else 1)"
    return {"exec": {"command": ["python", "-c", code]}, "periodSeconds": 0.1, **timing}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_liveness_failure_restarts_the_container(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    # unhealthy on its first run only: the second run creates the file the probe looks for
    code = (
        "import os, time\n"
        "if os.path.exists('ran'):\n    open('healthy', 'w').close()\n"
        "open('ran', 'w').close()\ntime.sleep(600)\n"
    )
    probe = exists("healthy", failureThreshold=2)
    pod = make_pod("live-1", [container("c", code, livenessProbe=probe)], grace=0.2)
    await rt.sync_pod(pod, resolve)
    first = await statuses.wait("live-1", running("c"))
    status = await statuses.wait(
        "live-1", lambda s: cstatus(s, "c")["restartCount"] == 1 and state(s, "c") == "running"
    )
    last = cstatus(status, "c")["lastState"]["terminated"]
    assert last["exitCode"] == 143 and last["signal"] == 15  # SIGTERM, as the kill asked
    assert pid_of(status, "c") != pid_of(first, "c")
    assert cstatus(status, "c")["started"] is True
    # healthy now: a few more probe periods do not restart it
    mark = statuses.mark()
    await statuses.wait("live-1", lambda s: condition(s, "Ready") == "True")
    assert not statuses.seen("live-1", lambda s: cstatus(s, "c")["restartCount"] > 1, since=mark)


async def test_readiness_toggles_ready(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    port, tcp_port = free_port(), free_port()
    server = (
        "import os, http.server, socket, threading\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        ok = os.path.exists('ready') and self.path == '/healthz'\n"
        "        self.send_response(200 if ok else 503); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "tcp = socket.create_server(('127.0.0.1', int(os.environ['TCP_PORT'])))\n"
        "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
    )
    web = container(
        "web",
        server,
        env=[{"name": "PORT", "value": str(port)}, {"name": "TCP_PORT", "value": str(tcp_port)}],
        ports=[{"name": "http", "containerPort": port}],
        readinessProbe={
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 0.1,
            "timeoutSeconds": 1,
            "failureThreshold": 1,
            "successThreshold": 2,
        },
    )
    sidecar = container(
        "sidecar",
        SLEEP,
        readinessProbe={"tcpSocket": {"port": tcp_port}, "periodSeconds": 0.1},
    )
    await rt.sync_pod(make_pod("ready-1", [web, sidecar]), resolve)
    status = await statuses.wait("ready-1", lambda s: cstatus(s, "sidecar")["ready"])
    assert cstatus(status, "web")["ready"] is False and condition(status, "Ready") == "False"
    flag = container_root(rt, "ready-1", "web") / "ready"
    flag.touch()
    status = await statuses.wait("ready-1", lambda s: condition(s, "Ready") == "True")
    assert cstatus(status, "web")["ready"] is True
    assert condition(status, "ContainersReady") == "True"
    mark = statuses.mark()
    flag.unlink()
    status = await statuses.wait("ready-1", lambda s: not cstatus(s, "web")["ready"], since=mark)
    assert condition(status, "Ready") == "False"
    assert "[web]" in next(c for c in status["conditions"] if c["type"] == "Ready")["message"]
    mark = statuses.mark()
    flag.touch()
    await statuses.wait("ready-1", lambda s: condition(s, "Ready") == "True", since=mark)
    assert cstatus(rt.pod_status("ready-1"), "web")["restartCount"] == 0  # readiness never restarts


async def test_startup_probe_gates_liveness_and_readiness(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    app = container(
        "app",
        SLEEP,
        startupProbe=exists("go", failureThreshold=1000),
        # would fail at once: it must not run before the startup probe passed
        livenessProbe=exists("go", failureThreshold=1),
        readinessProbe=exists("."),
    )
    await rt.sync_pod(make_pod("startup-1", [app]), resolve)
    status = await statuses.wait("startup-1", running("app"))
    assert cstatus(status, "app")["started"] is False and cstatus(status, "app")["ready"] is False
    (container_root(rt, "startup-1", "app") / "go").touch()
    status = await statuses.wait("startup-1", lambda s: cstatus(s, "app")["ready"])
    assert cstatus(status, "app")["started"] is True
    assert cstatus(status, "app")["restartCount"] == 0


async def test_failing_startup_probe_restarts_the_container(make_runtime: MakeRuntime) -> None:
    rt = await make_runtime()
    statuses = StatusLog(rt)
    app = container("app", SLEEP, startupProbe=exists("never", failureThreshold=2))
    await rt.sync_pod(make_pod("startup-2", [app], grace=0.2), resolve)
    status = await statuses.wait("startup-2", lambda s: cstatus(s, "app")["restartCount"] >= 1)
    assert cstatus(status, "app")["lastState"]["terminated"]["exitCode"] == 143
    assert status["phase"] == "Running"
