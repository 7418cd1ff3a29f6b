"""kopf (an operator framework) reacts to custom resources created on the API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import SENSORS, RawClient, ServerThread, install_sensor_crd, wait_for

pytestmark = pytest.mark.slow

HANDLERS = """\
import pathlib

import kopf

MARKER = pathlib.Path({marker!r})


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.posting.enabled = False  # no Events: keep the test about the resource
    settings.watching.server_timeout = {server_timeout!r}


@kopf.on.create("examples.orbiter.io", "v1", "sensors")
def sensor_created(name, namespace, spec, patch, **_):
    MARKER.write_text(f"{{namespace}}/{{name}} {{spec['unit']}}")
    patch.metadata.setdefault("labels", {{}})["handled-by"] = "kopf"
    return {{"unit": spec["unit"]}}
"""


def sensor(name: str, unit: str) -> dict[str, Any]:
    return {
        "apiVersion": "examples.orbiter.io/v1",
        "kind": "Sensor",
        "metadata": {"name": name},
        "spec": {"gateway": "gw-north", "unit": unit},
    }


class Kopf:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, marker: Path) -> None:
        self.proc, self.log, self.marker = proc, log, marker

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_handled(self, raw: RawClient, name: str, unit: str) -> dict[str, Any]:
        """Wait for the create handler to run on ``name`` and for its patch to land."""

        def reacted() -> bool:
            assert self.proc.poll() is None, f"kopf exited early:\n{self.output()}"
            return self.marker.exists() and self.marker.read_text() == f"default/{name} {unit}"

        wait_for(reacted, timeout=60, what=f"kopf's create handler on {name}")

        def patched() -> dict[str, Any] | None:
            obj: dict[str, Any] = raw.json("GET", f"{SENSORS}/{name}")
            done = (obj["metadata"].get("labels") or {}).get("handled-by") == "kopf"
            return obj if done and (obj.get("status") or {}).get("sensor_created") else None

        obj: dict[str, Any] = wait_for(patched, timeout=60, what=f"kopf's patch of {name}")
        assert obj["status"]["sensor_created"] == {"unit": unit}
        annotations = obj["metadata"].get("annotations") or {}
        assert "kopf.zalando.org/last-handled-configuration" in annotations
        return obj


@contextmanager
def running_kopf(
    server: ServerThread, tmp_path: Path, *, server_timeout: int | None = None
) -> Iterator[Kopf]:
    """``kopf run --standalone -n default handlers.py``, stopped (by PID) on exit."""
    marker = tmp_path / "created.txt"
    handlers = tmp_path / "handlers.py"
    handlers.write_text(HANDLERS.format(marker=str(marker), server_timeout=server_timeout))
    log = tmp_path / "kopf.log"
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig)}
    kopf = Path(sys.executable).with_name("kopf")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(kopf), "run", "--standalone", "--verbose", "-n", "default", str(handlers)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=tmp_path,
        )  # fmt: skip
    running = Kopf(proc, log, marker)
    try:
        yield running
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert "Traceback" not in running.output(), running.output()


def test_kopf_reacts_to_a_created_custom_resource(
    server: ServerThread, raw: RawClient, tmp_path: Path
) -> None:
    install_sensor_crd(raw)
    with running_kopf(server, tmp_path) as kopf:
        # The first object exists before kopf watches (seen in its initial list), the second
        # is created once kopf is handling events (seen through its watch).
        raw.json("POST", SENSORS, sensor("greenhouse-1", "celsius"), expect=201)
        kopf.wait_handled(raw, "greenhouse-1", "celsius")
        raw.json("POST", SENSORS, sensor("barn-2", "pascal"), expect=201)
        kopf.wait_handled(raw, "barn-2", "pascal")


def test_kopf_recovers_when_its_resource_version_is_compacted(
    server: ServerThread, raw: RawClient, tmp_path: Path
) -> None:
    """kopf re-watches (here every second) from the last resourceVersion it saw; once that
    is compacted, the server's 410 makes it re-list and carry on."""
    install_sensor_crd(raw)
    with running_kopf(server, tmp_path, server_timeout=1) as kopf:
        raw.json("POST", SENSORS, sensor("before", "celsius"), expect=201)
        kopf.wait_handled(raw, "before", "celsius")
        # Move the store past every sensor event, then forget the history kopf stands on.
        for i in range(3):
            raw.json("POST", "/api/v1/namespaces/default/configmaps",
                     {"metadata": {"name": f"filler-{i}"}}, expect=201)  # fmt: skip
        server.call(server.store.compact(server.call(server.store.current_revision())))
        restarts = "Restarting the watch-stream for sensors.v1.examples.orbiter.io"
        wait_for(lambda: restarts in kopf.output(), timeout=30,
                 what="kopf to hit the compacted revision and restart its watch")  # fmt: skip
        raw.json("POST", SENSORS, sensor("after", "percent"), expect=201)
        kopf.wait_handled(raw, "after", "percent")
        assert "Error in the watch-stream" not in kopf.output()
