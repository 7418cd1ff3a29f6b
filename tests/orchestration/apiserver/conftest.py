"""Fixtures for the API server's end-to-end tests: a server on a background thread (so blocking
clients work), raw HTTPS, kubectl with a fresh discovery cache, and ``orbiter cloud``
subprocesses stopped by their PID.

The cloud's controllers are not needed here: ``ServerThread`` runs ``APIServer`` alone. Tests
that need them (garbage collection, namespace deletion) use ``orbiter.testing.CloudThread``;
``orbiter cloud`` subprocesses run them too.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from orbiter.orchestration.apiserver import APIServer
from orbiter.orchestration.store import Store

T = TypeVar("T")

KUBECTL_DIR = Path("/usr/lib/google-cloud-sdk/bin")
# The dispatcher picks the client matching the server's /version; the others are explicit.
KUBECTLS = {
    "dispatcher": "/usr/bin/kubectl",
    "1.27": str(KUBECTL_DIR / "kubectl.1.27"),
    "1.33": str(KUBECTL_DIR / "kubectl.1.33"),
}
START_TIMEOUT = 30.0


class ServerThread:
    """``APIServer`` on its own event loop in a background thread."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        store_url: str | None = None,
        bookmark_interval: float = 0.2,
    ) -> None:
        self.server = APIServer(
            data_dir,
            port=0,
            store_url=store_url,
            bookmark_interval=bookmark_interval,
            compact_interval=3600.0,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="orbiter-apiserver")

    @property
    def kubeconfig(self) -> Path:
        return self.server.kubeconfig_path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> Store:
        assert self.server.store is not None
        return self.server.store

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> ServerThread:
        self._thread.start()
        try:
            self.call(self.server.start(), START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self.server.stop(), START_TIMEOUT)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(START_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path / "server") as srv:
        yield srv


# --- raw HTTPS -----------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """Blocking HTTPS requests with the server's CA and (by default) the admin token."""

    def __init__(self, url: str, ca_path: Path, token: str | None) -> None:
        host, _, port = url.removeprefix("https://").rpartition(":")
        self.host, self.port = host, int(port)
        self.ssl = ssl.create_default_context(cafile=str(ca_path))
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        token: str | None = "",
        timeout: float = 30.0,
    ) -> Response:
        """``body``: bytes as they are, anything else as JSON. ``token=None``: no header;
        ``""``: the admin token."""
        hdrs = dict(headers or {})
        tok = self.token if token == "" else token
        if tok is not None:
            hdrs["Authorization"] = f"Bearer {tok}"
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = content_type
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def json(self, method: str, path: str, body: Any = None, *, expect: int = 200) -> Any:
        resp = self.request(method, path, body)
        assert resp.status == expect, (resp.status, resp.body[:2000])
        return resp.json()

    def stream(
        self, path: str, *, timeout: float = 30.0
    ) -> tuple[http.client.HTTPSConnection, http.client.HTTPResponse]:
        """A GET whose body is read incrementally (watches); the caller closes the conn."""
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=timeout)
        hdrs = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        conn.request("GET", path, headers=hdrs)
        return conn, conn.getresponse()


def raw_client(srv: ServerThread | APIServer) -> RawClient:
    s = srv.server if isinstance(srv, ServerThread) else srv
    return RawClient(s.url, s.ca_path, s.token)


@pytest.fixture
def raw(server: ServerThread) -> RawClient:
    return raw_client(server)


# --- kubectl -------------------------------------------------------------------------------


@dataclass
class Kubectl:
    binary: str
    kubeconfig: Path
    cache_dir: Path

    def argv(self, *args: str) -> list[str]:
        return [
            self.binary,
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.cache_dir),
            *args,
        ]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            self.argv(*args), input=stdin, capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited with {proc.returncode}:\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}",
                pytrace=False,
            )
        return proc.stdout if check else proc.stdout + proc.stderr

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), input=stdin, capture_output=True, text=True, timeout=60
        )


@pytest.fixture(params=list(KUBECTLS), ids=list(KUBECTLS))
def kubectl(request: pytest.FixtureRequest, server: ServerThread, tmp_path: Path) -> Kubectl:
    """kubectl as the dispatcher picks it, and 1.27 and 1.33 explicitly; a fresh cache."""
    binary = KUBECTLS[request.param]
    if not Path(binary).exists():
        pytest.fail(f"{binary} is not installed", pytrace=False)
    return Kubectl(binary, server.kubeconfig, tmp_path / f"kube-cache-{request.param}")


# --- orbiter cloud subprocesses ------------------------------------------------------------

_LISTENING = re.compile(r"Orbiter API server at (https://\S+)")


@dataclass
class CloudProcess:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path
    url: str = ""

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self) -> RawClient:
        token = (self.data_dir / "admin.token").read_text().strip()
        return RawClient(self.url, self.data_dir / "ca.crt", token)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> str:
        """Wait for the 'listening' line this process prints (its log is its own file)."""
        deadline = time.monotonic() + timeout
        while True:
            match = _LISTENING.search(self.output())
            if match:
                self.url = match.group(1)
                return self.url
            if self.proc.poll() is not None:
                pytest.fail(
                    f"orbiter cloud exited with {self.proc.returncode}:\n{self.output()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(f"orbiter cloud did not start in {timeout}s:\n{self.output()}")
            time.sleep(0.05)  # poll interval of the startup probe

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def start_cloud(tmp_path: Path) -> Iterator[Callable[..., CloudProcess]]:
    """Start ``orbiter cloud --api-port 0`` subprocesses; each is killed by PID at teardown
    if the test left it running."""
    started: list[CloudProcess] = []

    def start(data_dir: Path, *extra: str, wait: bool = True) -> CloudProcess:
        data_dir.mkdir(parents=True, exist_ok=True)
        log = tmp_path / f"cloud-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orbiter.cli", "cloud", "--data-dir", str(data_dir),
                 "--api-port", "0", "--hub-port", "0", "--join-port", "0",
                 "--router-port", "0", *extra],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        cloud = CloudProcess(proc, data_dir, log)
        started.append(cloud)
        if wait:
            cloud.wait_listening()
            wait_ready(cloud.client())
        return cloud

    try:
        yield start
    finally:
        for cloud in started:
            cloud.kill()


def wait_ready(client: RawClient, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get("/readyz", token=None, timeout=5).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the API server was not ready in {timeout}s")
        time.sleep(0.05)  # poll interval of the readiness probe


def wait_for(
    condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


# --- manifests -------------------------------------------------------------------------------

SENSOR_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: sensors.examples.orbiter.io
spec:
  group: examples.orbiter.io
  scope: Namespaced
  names:
    plural: sensors
    singular: sensor
    kind: Sensor
    shortNames: [sen]
  versions:
    - name: v1
      served: true
      storage: true
      subresources:
        status: {}
      additionalPrinterColumns:
        - name: Gateway
          type: string
          jsonPath: .spec.gateway
        - name: Unit
          type: string
          jsonPath: .spec.unit
        - name: Interval
          type: integer
          jsonPath: .spec.intervalSeconds
        - name: Age
          type: date
          jsonPath: .metadata.creationTimestamp
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [gateway, unit]
              properties:
                gateway:
                  type: string
                  pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'
                unit:
                  type: string
                  enum: [celsius, percent, pascal]
                intervalSeconds:
                  type: integer
                  minimum: 1
                  maximum: 3600
                  default: 60
            status:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""

SENSORS = "/apis/examples.orbiter.io/v1/namespaces/default/sensors"


def install_sensor_crd(client: RawClient) -> None:
    """Create the Sensor CRD over HTTPS and wait until its resource is served."""
    client.json(
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        yaml.safe_load(SENSOR_CRD),
        expect=201,
    )
    wait_for(lambda: client.get(SENSORS).status == 200, what="the sensors resource")
