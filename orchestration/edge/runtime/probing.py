"""Liveness, readiness and startup probes (``exec``, ``httpGet``, ``tcpSocket``).

Kubernetes semantics: probing starts ``initialDelaySeconds`` after the container started;
while a startup probe has not succeeded the others wait; ``failureThreshold`` consecutive
failures of liveness or startup make the pod worker restart the container, readiness flips
after ``successThreshold`` successes or ``failureThreshold`` failures. Periods and timeouts
may be fractional (tests probe every 0.1 s). Exec probes run in the container's environment
and working directory, in a session of their own so a timeout kills all they started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import ssl
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .configuring import ConfigError, as_dict, as_list, as_number, as_str, as_strings
from .processes import wait_exit

KINDS = ("startupProbe", "livenessProbe", "readinessProbe")
USER_AGENT = "kube-probe/1.31"


@dataclass(frozen=True)
class Probe:
    kind: str  # one of KINDS
    handler: str  # exec, httpGet or tcpSocket
    spec: dict[str, Any]
    port: int | None
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int
    grace: float | None  # the probe's terminationGracePeriodSeconds, for liveness kills


@dataclass(frozen=True)
class ProbeTarget:
    env: Mapping[str, str]
    cwd: str


def _port(value: Any, ports: Mapping[str, int], where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, str):
        if value not in ports:
            raise ConfigError(f'{where}: named port "{value}" is not among the container\'s ports')
        return ports[value]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{where}: Invalid value: {value!r}: must be a port number or name")
    return value


def parse_probes(container: dict[str, Any], path: str) -> dict[str, Probe]:
    ports: dict[str, int] = {}
    for i, p in enumerate(as_list(container.get("ports"), f"{path}.ports")):
        p = as_dict(p, f"{path}.ports[{i}]")
        if isinstance(p.get("name"), str) and isinstance(p.get("containerPort"), int):
            ports[p["name"]] = p["containerPort"]
    probes: dict[str, Probe] = {}
    for kind in KINDS:
        if container.get(kind) is None:
            continue
        where = f"{path}.{kind}"
        spec = as_dict(container[kind], where)
        handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if h in spec]
        if len(handlers) != 1 or handlers[0] == "grpc":
            raise ConfigError(
                f"{where}: must have exactly one of exec, httpGet or tcpSocket (grpc probes are "
                "not supported by the process runtime)"
            )
        handler = handlers[0]
        body = as_dict(spec[handler], f"{where}.{handler}")
        port = None
        if handler == "exec":
            if not as_strings(body.get("command"), f"{where}.exec.command"):
                raise ConfigError(f"{where}.exec.command: Required value")
        else:
            port = _port(body.get("port"), ports, f"{where}.{handler}.port")
            if handler == "httpGet":
                scheme = as_str(body.get("scheme"), f"{where}.httpGet.scheme", default="HTTP")
                if scheme.upper() not in ("HTTP", "HTTPS"):
                    raise ConfigError(f'{where}.httpGet.scheme: Unsupported value: "{scheme}"')
        success = as_number(
            spec.get("successThreshold"), f"{where}.successThreshold", default=1, minimum=1
        )
        if kind != "readinessProbe" and success != 1:
            raise ConfigError(f"{where}.successThreshold: must be 1")
        grace = spec.get("terminationGracePeriodSeconds")
        probes[kind] = Probe(
            kind=kind,
            handler=handler,
            spec=body,
            port=port,
            initial_delay=as_number(
                spec.get("initialDelaySeconds"), f"{where}.initialDelaySeconds", default=0
            ),
            period=as_number(
                spec.get("periodSeconds"), f"{where}.periodSeconds", default=10, minimum=0.01
            ),
            timeout=as_number(
                spec.get("timeoutSeconds"), f"{where}.timeoutSeconds", default=1, minimum=0.01
            ),
            success_threshold=int(success),
            failure_threshold=int(
                as_number(
                    spec.get("failureThreshold"), f"{where}.failureThreshold", default=3, minimum=1
                )
            ),
            grace=None
            if grace is None
            else as_number(grace, f"{where}.terminationGracePeriodSeconds", default=0),
        )
    return probes


async def run_probe(probe: Probe, target: ProbeTarget) -> tuple[bool, str]:
    """One attempt: (success, what failed)."""
    if probe.handler == "exec":
        return await _exec(list(probe.spec["command"]), target, probe.timeout)
    assert probe.port is not None
    host = as_str(probe.spec.get("host"), "host", default="") or "127.0.0.1"
    if probe.handler == "tcpSocket":
        return await _tcp(host, probe.port, probe.timeout)
    return await _http(probe.spec, host, probe.port, probe.timeout)


async def _exec(argv: list[str], target: ProbeTarget, limit: float) -> tuple[bool, str]:
    try:
        # Popen returns once exec happened (milliseconds); only the wait is asynchronous
        proc = subprocess.Popen(  # noqa: ASYNC220
            argv,
            env=dict(target.env),
            cwd=target.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"exec {argv[0]!r}: {exc.strerror}"
    try:
        await asyncio.wait_for(wait_exit(proc.pid), limit)
    except TimeoutError:
        return False, f"command {argv!r} timed out after {limit:g}s"
    finally:
        if proc.poll() is None:  # timed out or cancelled: not reaped yet, so the group is its
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode == 0:
        return True, ""
    return False, f"command {argv!r} exited with {proc.returncode}"


async def _tcp(host: str, port: int, limit: float) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
    except TimeoutError:
        return False, f"dial tcp {host}:{port}: i/o timeout"
    except OSError as exc:
        return False, f"dial tcp {host}:{port}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


@functools.cache
def _insecure_tls() -> ssl.SSLContext:
    """kubelet does not verify probe certificates either."""
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    return tls


async def _http(spec: dict[str, Any], host: str, port: int, limit: float) -> tuple[bool, str]:
    scheme = str(spec.get("scheme") or "HTTP").lower()
    path = str(spec.get("path") or "/")
    path = path if path.startswith("/") else "/" + path
    url = f"{scheme}://{host}:{port}{path}"
    headers = "".join(
        f"{h.get('name')}: {h.get('value')}\r\n"
        for h in spec.get("httpHeaders") or []
        if isinstance(h, dict) and isinstance(h.get("name"), str)
    )
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {USER_AGENT}\r\n"
        f"Accept: */*\r\nConnection: close\r\n{headers}\r\n"
    ).encode("latin-1", "replace")
    tls = _insecure_tls() if scheme == "https" else None

    async def attempt() -> int:
        reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        try:
            writer.write(request)
            await writer.drain()
            return int((await reader.readline()).split()[1])
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    try:
        code = await asyncio.wait_for(attempt(), limit)
    except TimeoutError:
        return False, f'Get "{url}": context deadline exceeded'
    except (OSError, ValueError, IndexError) as exc:
        return False, f'Get "{url}": {getattr(exc, "strerror", None) or exc}'
    if 200 <= code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"


class Prober:
    """The probes of one container run. ``notify(event, message)`` tells the pod worker:
    ``started``, ``ready``, ``unready``, ``liveness`` or ``startup`` (the last two: failed
    past the threshold; the container must be restarted)."""

    def __init__(
        self,
        probes: Mapping[str, Probe],
        target: ProbeTarget,
        running_for: float,
        started: bool,
        notify: Callable[[str, str], None],
    ) -> None:
        self.probes = probes
        self.ready = False
        self._target = target
        self._running_for = running_for
        self._notify = notify
        self._started = asyncio.Event()
        if started or "startupProbe" not in probes:
            self._started.set()
        self._tasks = [asyncio.create_task(self._loop(p)) for p in probes.values()]

    @property
    def started(self) -> bool:
        return self._started.is_set()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _loop(self, probe: Probe) -> None:
        if probe.kind == "startupProbe" and self.started:
            return
        if probe.initial_delay > self._running_for:
            await asyncio.sleep(probe.initial_delay - self._running_for)
        successes = failures = 0
        while True:
            if probe.kind != "startupProbe":
                await self._started.wait()
            ok, message = await run_probe(probe, self._target)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if probe.kind == "startupProbe":
                if ok:
                    self._started.set()
                    self._notify("started", "")
                    return
                if failures >= probe.failure_threshold:
                    self._notify("startup", f"Startup probe failed: {message}")
                    return
            elif probe.kind == "livenessProbe":
                if failures >= probe.failure_threshold:
                    self._notify("liveness", f"Liveness probe failed: {message}")
                    return
            elif ok and successes >= probe.success_threshold and not self.ready:
                self.ready = True
                self._notify("ready", "")
            elif not ok and failures >= probe.failure_threshold and self.ready:
                self.ready = False
                self._notify("unready", f"Readiness probe failed: {message}")
            await asyncio.sleep(probe.period)
