"""The joint-inference part of ``orbiter demo`` (reference ``sedna.md`` §8.4 S1, on digits).

1. The digits models: fetched from the model registry in the data dir (``DIR/registry``,
   alias ``production``), or trained, exported to ONNX and registered there first.
2. A cloud (its global manager included) and one edge node, ``edge-0``: ``orbiter up`` as a
   child process, its output in ``DIR/orbiter-up.log``.
3. ``deploy/examples/collab/joint-inference-digits.yaml``, applied with kubectl as a copy whose
   Model ``url``s are the fetched files and whose two ports are free ones; the global manager
   makes the workers' Deployments, and the node runs them as processes. At the end the copy
   is deleted with kubectl and the demo waits for the worker pods to be gone before stopping
   ``orbiter up`` (a stopped node leaves its pods running: edge autonomy).
4. The held-out digits, one request each, through the edge worker's endpoint: accuracy of the
   edge alone, the cloud alone and the two together, the upload ratio and the latency.
5. A sweep of CrossEntropy thresholds, computed in-process with the SDK on the same models,
   plotted as accuracy against upload ratio (a PNG, when matplotlib is installed).
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import yaml

__all__ = ["MANIFEST", "JointInferenceDemo", "ensure_models", "run_joint_inference"]

MANIFEST = (
    Path(__file__).resolve().parent.parent
    / "deploy"
    / "examples"
    / "collab"
    / "joint-inference-digits.yaml"
)
MODELS = ("digits-edge", "digits-cloud")
ALIAS = "production"
SERVICE = "digits"
NAMESPACE = "default"
SWEEP = (0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)
# Sedna's labels on a JointInferenceService's pods (reference sedna.md §1.5).
NAME_LABEL = "jointinferenceservice.sedna.io/name"
TYPE_LABEL = "jointinferenceservice.sedna.io/worker-type"
MATPLOTLIB_PIN = "matplotlib==3.11.2"


@dataclass
class JointInferenceDemo:
    """The figures the demo printed (accuracies and ratios are fractions)."""

    samples: int
    threshold: float
    edge_only: float
    cloud_only: float
    joint: float
    upload_ratio: float
    answered_by_cloud: int
    latency_p50_ms: float
    latency_p99_ms: float
    sweep: list[tuple[float, float, float]] = field(default_factory=list)  # (t, upload, acc)
    plot: Path | None = None


def ensure_models(data_dir: Path, out: IO[str]) -> dict[str, Path]:
    """Each digits model's ONNX file in ``data_dir/models``, fetched (verified) from the
    registry in ``data_dir/registry``; trained, exported and registered first if missing."""
    from orbiter.models import ModelNotFound, Registry

    registry = Registry(data_dir=data_dir / "registry")
    files = {}
    for name in MODELS:
        dest = data_dir / "models" / f"{name}.onnx"
        try:
            info = registry.get(name, alias=ALIAS)
            how = "from the registry"
        except ModelNotFound:
            print(f"  {name}: training (seed 0) and exporting to ONNX ...", file=out, flush=True)
            info = _train_and_register(registry, name, data_dir / "exports")
            how = "trained and registered"
        files[name] = registry.fetch(name, version=info.version, dest=dest)
        print(f"  {name}: version {info.version} {how} -> {files[name]}", file=out, flush=True)
    return files


def _train_and_register(registry: Any, name: str, directory: Path) -> Any:
    from orbiter.models import export_onnx, train_digits

    for chatty in ("onnxscript", "onnx_ir"):  # their INFO lines drown the demo's under the CLI
        logging.getLogger(chatty).setLevel(logging.WARNING)

    model, history, split = train_digits(name, seed=0)
    path = directory / f"{name}.onnx"
    export_onnx(model, path, split.x_test[:1], check_data=split.x_test)
    metrics = {k: float(v) for k, v in history.last.items()}
    return registry.register(
        name, path, dataset="digits@seed0", aliases=[ALIAS], params={"seed": 0}, metrics=metrics
    )


def _free_port() -> int:
    # Bound and released: another process could take it meanwhile, which a demo can afford.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def render_manifest(files: dict[str, Path], edge_port: int, cloud_port: int) -> str:
    """The example manifest with the Models' ``url``s and the workers' ports filled in."""
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    ports = {"EDGE_BIND_PORT": edge_port, "BIG_MODEL_BIND_PORT": cloud_port}
    for doc in docs:
        if doc["kind"] == "Model":
            doc["spec"]["url"] = str(files[doc["metadata"]["name"]])
        elif doc["kind"] == "JointInferenceService":
            for worker in ("edgeWorker", "cloudWorker"):
                for container in doc["spec"][worker]["template"]["spec"]["containers"]:
                    for env in container.get("env") or []:
                        if env["name"] in ports:
                            env["value"] = str(ports[env["name"]])
    return yaml.safe_dump_all(docs, sort_keys=False)


def _kubectl(kubeconfig: Path, *args: str, out: IO[str], check: bool = True) -> str:
    print(f"\n$ kubectl {' '.join(args)}", file=out, flush=True)
    done = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True
    )
    print(done.stdout + done.stderr, end="", file=out, flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"kubectl {args[0]} exited {done.returncode}")
    return done.stdout


def _kubectl_json(kubeconfig: Path, *args: str) -> Any:
    done = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args, "-o", "json"],
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


def _worker_pods(kubeconfig: Path) -> list[dict[str, Any]]:
    found = _kubectl_json(kubeconfig, "get", "pods", "-l", f"{NAME_LABEL}={SERVICE}")
    return [] if found is None else list(found["items"])


def _workers_state(kubeconfig: Path) -> str | None:
    """None once both workers run and the edge one targets the cloud one's pod; else what
    is still missing."""
    service = _kubectl_json(kubeconfig, "get", "ji", SERVICE)
    conditions = ((service or {}).get("status") or {}).get("conditions") or [{}]
    last = conditions[-1]
    if last.get("type") != "Running":
        return f"service {last.get('type')}: {last.get('message')}"
    by_type: dict[str, list[dict[str, Any]]] = {"cloud": [], "edge": []}
    for pod in _worker_pods(kubeconfig):
        by_type.setdefault(pod["metadata"]["labels"].get(TYPE_LABEL, ""), []).append(pod)
    for kind, found in by_type.items():
        phases = [(p.get("status") or {}).get("phase") for p in found]
        if phases != ["Running"] or found[0]["metadata"].get("deletionTimestamp"):
            return f"{kind} worker pods: {phases}"
    # The global manager first gives the edge the Service's name, then the cloud pod's IP
    # (its pod is replaced then): wait for the replacement.
    cloud_ip = by_type["cloud"][0]["status"].get("podIP")
    env = {
        e["name"]: e.get("value")
        for c in by_type["edge"][0]["spec"]["containers"]
        for e in c.get("env") or []
    }
    if env.get("BIG_MODEL_IP") != cloud_ip:
        return f"edge worker targets {env.get('BIG_MODEL_IP')}, the cloud pod is at {cloud_ip}"
    return None


class _Cluster:
    """``orbiter up --edges 1`` as a child process (in a session of its own: a terminal's
    Ctrl-C reaches the demo, which stops it in order)."""

    READY = "edge node(s) Ready"

    def __init__(self, directory: Path, log: Path) -> None:
        self.log = log
        argv = [sys.executable, "-m", "orbiter.cli", "up", "--edges", "1"]
        argv += ["--data-dir", str(directory)]
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kubeconfig(self, timeout: float) -> Path:
        """Once every node is Ready: the admin kubeconfig."""
        state: dict[str, Path] = {}

        def check() -> str | None:
            if self.proc.poll() is not None:
                raise SystemExit(f"orbiter up exited {self.proc.returncode}: see {self.log}")
            lines = self.log.read_text(errors="replace").splitlines()
            ready = [i for i, line in enumerate(lines) if self.READY in line]
            # Printed after the Ready line (the cloud's own, earlier, has a prefix).
            after = lines[ready[0] :] if ready else []
            paths = [line for line in after if line.startswith("kubeconfig: ")]
            if not paths:
                return "starting"
            state["kubeconfig"] = Path(paths[0].split(": ", 1)[1])
            return None

        _wait(check, "orbiter up", timeout)
        return state["kubeconfig"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)  # orbiter up gives each child 30 s
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Endpoint:
    """A keep-alive client of the edge worker's Open Inference Protocol endpoint."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.path = f"/v2/models/{SERVICE}/infer"

    def ready(self) -> bool:
        try:
            self.conn.request("GET", "/v2/health/ready")
            response = self.conn.getresponse()
            response.read()
        except OSError:
            self.conn.close()
            return False
        if self.conn.sock is not None:  # small requests: Nagle's algorithm would hold each
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return response.status == 200

    def infer(self, x: np.ndarray) -> dict[str, Any]:
        tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel()}
        body = orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)
        self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        answer: dict[str, Any] = orjson.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"the edge worker answered {response.status}: {answer}")
        return answer


def _wait(check: Callable[[], str | None], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = check()
    while state is not None:
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not ready after {timeout:.0f} s ({state})")
        time.sleep(0.25)  # polling a converging cluster: there is no event to wait on
        state = check()


def run_joint_inference(
    data_dir: Path,
    *,
    samples: int | None = None,
    interactive: bool = False,
    out: IO[str] | None = None,
    timeout: float = 120.0,
) -> JointInferenceDemo:
    """Runs the story (see the module's docstring) in ``data_dir``, printing to ``out``
    (default: stdout); ``samples`` limits the held-out digits streamed (default: all 450).
    ``interactive``: keep the cluster running until Ctrl-C once done."""
    from orbiter.models import load_digits_split

    out = sys.stdout if out is None else out
    print("\n== Joint inference on digits: an edge model, a cloud model ==", file=out)
    files = ensure_models(data_dir, out)
    split = load_digits_split(seed=0)
    n = len(split.x_test) if samples is None else min(samples, len(split.x_test))
    x, y = split.x_test[:n], split.y_test[:n]
    cluster_dir = data_dir / "cluster"
    shutil.rmtree(cluster_dir, ignore_errors=True)  # a fresh cluster each run
    print(f"\n$ orbiter up --edges 1 --data-dir {cluster_dir}", file=out, flush=True)
    cluster = _Cluster(cluster_dir, data_dir / "orbiter-up.log")
    manifest = data_dir / "joint-inference-digits.yaml"
    manifest.unlink(missing_ok=True)  # its presence says it was applied
    kube = None
    try:
        kube = cluster.kubeconfig(timeout)
        print(f"a cloud (global manager included) and node edge-0; log {cluster.log}", file=out)
        edge_port, cloud_port = _free_port(), _free_port()
        manifest.write_text(render_manifest(files, edge_port, cloud_port))
        _kubectl(kube, "apply", "-f", str(manifest), out=out)
        _wait(lambda: _workers_state(kube), "the joint inference workers", timeout)
        endpoint = _Endpoint(edge_port)
        _wait(lambda: None if endpoint.ready() else "not ready", "the edge endpoint", timeout)
        _kubectl(kube, "get", "ji,deployments,pods,services", "-o", "wide", out=out)
        _kubectl(kube, "logs", f"deployment/{SERVICE}-deployment-edge", out=out)

        url = f"http://127.0.0.1:{edge_port}{endpoint.path}"
        print(f"\nStreaming {n} held-out digits, one request each, to {url} ...", file=out)
        answers, latencies = [], []
        for i in range(n):
            started = time.perf_counter()
            answers.append(endpoint.infer(x[i : i + 1]))
            latencies.append(time.perf_counter() - started)
        endpoint.conn.close()
        result = _report(files, x, y, answers, latencies, data_dir, out)
        if interactive:
            _hold(kube, url, out)
    finally:
        if kube is not None and manifest.exists():
            # Pods outlive a stopped node: delete them through the API first.
            _kubectl(kube, "delete", "-f", str(manifest), out=out, check=False)
            _wait(
                lambda: f"{len(pods)} left" if (pods := _worker_pods(kube)) else None,
                "the worker pods to go",
                timeout,
            )
        cluster.stop()
    return result


def _report(
    files: dict[str, Path],
    x: np.ndarray,
    y: np.ndarray,
    answers: list[dict[str, Any]],
    latencies: list[float],
    data_dir: Path,
    out: IO[str],
) -> JointInferenceDemo:
    """The figures of the run, then the sweep and its plot, printed."""
    from .demo_sweep import accuracy_of, plot, sweep

    n, threshold = len(answers), _threshold()
    predicted = np.array([int(np.argmax(a["outputs"][0]["data"])) for a in answers])
    hard = sum(bool(a["parameters"]["is_hard_example"]) for a in answers)
    by_cloud = sum(a["parameters"]["answered_by"] == "cloud" for a in answers)
    edge_only, cloud_only = (accuracy_of(files[m], x, y) for m in MODELS)
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))
    result = JointInferenceDemo(
        samples=n,
        threshold=threshold,
        edge_only=edge_only,
        cloud_only=cloud_only,
        joint=float((predicted == y).mean()),
        upload_ratio=hard / n,
        answered_by_cloud=by_cloud,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
    )
    print(
        f"\n  edge only  (digits-edge alone)   accuracy {result.edge_only:7.2%}"
        f"\n  cloud only (digits-cloud alone)  accuracy {result.cloud_only:7.2%}"
        f"\n  joint      (through the workers) accuracy {result.joint:7.2%}"
        f"\n  upload ratio {result.upload_ratio:.2%} ({hard} of {n} hard, {by_cloud} answered "
        f"by the cloud; CrossEntropy threshold {threshold})"
        f"\n  latency per request p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        file=out,
    )
    result.sweep = sweep(files["digits-edge"], files["digits-cloud"], x, y, SWEEP)
    print("\nCrossEntropy threshold sweep (in-process, the SDK on the same models):", file=out)
    print("  threshold  upload  accuracy", file=out)
    for t, ratio, acc in result.sweep:
        print(f"  {t:9.2f}  {ratio:6.1%}  {acc:8.2%}", file=out)
    result.plot = plot(result, data_dir / "joint-inference-sweep.png")
    if result.plot is None:
        print(f"\nNo plot: matplotlib is not installed (pip install {MATPLOTLIB_PIN})", file=out)
    else:
        print(f"\nPlot: {result.plot}", file=out)
    out.flush()
    return result


def _threshold() -> float:
    docs = yaml.safe_load_all(MANIFEST.read_text())
    service = next(d for d in docs if d["kind"] == "JointInferenceService")
    parameters = service["spec"]["edgeWorker"]["hardExampleMining"]["parameters"]
    return float(next(p["value"] for p in parameters if p["key"] == "threshold_cross_entropy"))


def _hold(kubeconfig: Path, url: str, out: IO[str]) -> None:
    print(
        "\nThe cluster keeps running until you press Ctrl-C; in another shell:\n"
        f"  export KUBECONFIG={kubeconfig}\n"
        "  kubectl get ji digits -o yaml\n"
        f"  curl -s {url.removesuffix('/infer')}",
        file=out,
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print(file=out)
