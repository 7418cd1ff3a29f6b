"""``orbiter demo``: start a cloud, apply the examples with kubectl and show the result; then
the joint-inference story (:mod:`orbiter.demo_joint`): a cloud and an edge node serving the
digits models as a JointInferenceService, with accuracy, upload ratio, latency and a plot."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "examples"


def _kubectl(kubeconfig: Path, *args: str, check: bool = True) -> int:
    cmd = ["kubectl", f"--kubeconfig={kubeconfig}", *args]
    print(f"\n$ kubectl {' '.join(args)}", flush=True)
    return subprocess.run(cmd, check=check).returncode


def _wait_ready(proc: subprocess.Popen[bytes], kubeconfig: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"orbiter cloud exited with status {proc.returncode}")
        if kubeconfig.exists():
            probe = subprocess.run(
                ["kubectl", f"--kubeconfig={kubeconfig}", "get", "--raw", "/readyz"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
        time.sleep(0.2)  # polling a child process we do not control; no event to wait on
    raise SystemExit("orbiter cloud did not become ready within a minute")


def run_demo(data_dir: Path | None = None, examples: Path = EXAMPLES) -> int:
    if shutil.which("kubectl") is None:
        print("the demo drives kubectl, which is not on PATH", file=sys.stderr)
        return 1
    if not examples.is_dir():
        print(f"no examples at {examples}", file=sys.stderr)
        return 1
    temp = None
    if data_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="orbiter-demo-")
        data_dir = Path(temp.name)
    try:
        _kubectl_story(data_dir, examples)
        from .demo_joint import run_joint_inference

        run_joint_inference(data_dir / "joint-inference", interactive=sys.stdin.isatty())
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if temp is not None:
            temp.cleanup()


def _kubectl_story(data_dir: Path, examples: Path) -> None:
    """A cloud of its own (``orbiter cloud``), the examples applied with kubectl."""
    kubeconfig = data_dir / "kubeconfig"
    print(f"Starting the Orbiter cloud (data dir {data_dir}) ...", flush=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orbiter.cli",
            "cloud",
            "--data-dir",
            str(data_dir),
            "--api-port",
            "0",
            "--hub-port",
            "0",
            "--join-port",
            "0",
            "--router-port",
            "0",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_ready(proc, kubeconfig)
        _kubectl(kubeconfig, "version")
        _kubectl(kubeconfig, "get", "namespaces")
        _kubectl(kubeconfig, "apply", "-f", str(examples / "crds"))
        _kubectl(
            kubeconfig,
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/sensors.examples.orbiter.io",
        )
        _kubectl(kubeconfig, "apply", "-f", str(examples))
        _kubectl(kubeconfig, "get", "deployments,replicasets,pods,configmaps")
        _kubectl(kubeconfig, "get", "sensors")
        _kubectl(kubeconfig, "scale", "deployment/thermo", "--replicas=3")
        _kubectl(kubeconfig, "get", "pods", "-l", "app=thermo")
        print("\nPods stay Pending: no edge node has joined this cloud.", flush=True)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
