"""The ``orbiter`` command: help, and ``orbiter cloud`` started and stopped as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import CloudProcess, RawClient

ORBITER = str(Path(sys.executable).with_name("orbiter"))  # the installed console script


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORBITER, *args], capture_output=True, text=True, timeout=60)


def test_help() -> None:
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: orbiter")
    assert "cloud" in proc.stdout and "demo" in proc.stdout

    proc = run("cloud", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: orbiter cloud")
    for option in ("--data-dir", "--api-port", "--store", "--listen"):
        assert option in proc.stdout

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("orbiter ")


def test_usage_errors_exit_2() -> None:
    proc = run("cloud")  # --data-dir is required
    assert proc.returncode == 2
    assert "--data-dir" in proc.stderr
    proc = run("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cloud_writes_a_kubeconfig_with_the_real_port_and_stops_cleanly(
    sig: signal.Signals, start_cloud: Callable[..., CloudProcess], tmp_path: Path
) -> None:
    cloud = start_cloud(tmp_path / "data")
    config = yaml.safe_load(cloud.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    assert server == cloud.url
    port = int(server.rsplit(":", 1)[1])
    assert port != 0
    assert f"kubeconfig: {cloud.kubeconfig}" in cloud.output()
    assert oct(cloud.kubeconfig.stat().st_mode & 0o777) == oct(0o600)  # it holds the token

    # The kubeconfig is all a client needs: CA, address and token.
    token = config["users"][0]["user"]["token"]
    client = RawClient(server, cloud.data_dir / "ca.crt", token)
    names = {ns["metadata"]["name"] for ns in client.json("GET", "/api/v1/namespaces")["items"]}
    assert {"default", "kube-system", "kube-public"} <= names
    assert client.get("/readyz", token=None).body == b"ok"

    os.kill(cloud.proc.pid, sig)
    assert cloud.proc.wait(30) == 0
    out = cloud.output()
    assert out.rstrip().endswith("stopping"), out
    assert "Traceback" not in out and "ERROR" not in out, out
    with pytest.raises(OSError):
        client.get("/livez", token=None, timeout=5)  # nothing listens on the port any more


@pytest.mark.slow
def test_cloud_restarts_on_its_data_dir(
    start_cloud: Callable[..., CloudProcess], tmp_path: Path
) -> None:
    """Same data dir: same CA and token, a new port in the rewritten kubeconfig, same state."""
    first = start_cloud(tmp_path / "data")
    first.client().json(
        "POST", "/api/v1/namespaces/default/configmaps",
        {"metadata": {"name": "kept"}, "data": {"k": "v"}}, expect=201,
    )  # fmt: skip
    ca = (tmp_path / "data" / "ca.crt").read_bytes()
    # orbiter cloud installs the sedna.io CRDs at start (orbiter.collab's kinds).
    sedna = first.client().json("GET", "/apis/sedna.io/v1alpha1")
    assert "jointinferenceservices" in {r["name"] for r in sedna["resources"]}
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/jointinferenceservices.sedna.io"
    version = first.client().json("GET", crd)["metadata"]["resourceVersion"]
    assert first.terminate() == 0

    second = start_cloud(tmp_path / "data")
    assert (tmp_path / "data" / "ca.crt").read_bytes() == ca
    config = yaml.safe_load(second.kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == second.url
    got = second.client().json("GET", "/api/v1/namespaces/default/configmaps/kept")
    assert got["data"] == {"k": "v"}
    # Unchanged CRDs are not rewritten at a restart.
    assert second.client().json("GET", crd)["metadata"]["resourceVersion"] == version
    assert second.terminate() == 0
