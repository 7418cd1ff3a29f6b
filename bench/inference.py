"""Inference benchmark: requests/s and latency of `orbiter serve` against raw onnxruntime and
KServe's Python model server, on a tiny model and a compute-heavy one.

Prints one JSON document. For each model (``digits``: the digits cloud model, where the
server's own per-request cost dominates; ``resnet18``: ResNet-18-sized, 3x224x224, random
weights, where onnxruntime's compute dominates), protocol (REST, gRPC) and concurrency, the
same load generator (its own process: aiohttp for REST, grpc.aio for gRPC; closed loop, each
of C workers sends its next request when the last answer is in) drives:

- ``orbiter``: ``orbiter serve`` (its own process) with dynamic batching (Triton semantics:
  no added delay; requests that queue while a batch runs form the next batch);
- ``kserve``: KServe 0.21's ModelServer (its own process and virtualenv: it pins protobuf<7)
  serving the same ONNX file through ``bench/peers/kserve_onnx.py``;
- ``raw``: ``InferenceSession.run`` on batch 1 in C threads of this process (the limit for a
  server that does not batch).

REST sends the digits model JSON tensors (64 numbers) and ResNet-18 binary tensors (Triton's
binary extension, 602 KB each); gRPC sends raw contents. ``--kserve-python`` points at a
Python with ``kserve==0.21.0 onnxruntime==1.32.0``; without it, the KServe rows are skipped.

    .venv/bin/python bench/inference.py [--duration 4] [--concurrency 1,8,32]
        [--models digits,resnet18] [--kserve-python /tmp/kserve-venv/bin/python]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

PY = sys.executable
HERE = Path(__file__).resolve().parent
WARMUP = 0.5  # seconds of each run not measured: connections, first batches
ARCHITECTURES = {
    "digits": ("digits-cloud", (1, 1, 8, 8)),
    "resnet18": ("resnet18", (1, 3, 224, 224)),
}


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def summary(latencies: list[float], seconds: float, errors: int = 0) -> dict[str, Any]:
    return {
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(pct(latencies, 0.5) * 1e3, 2),
        "p99_ms": round(pct(latencies, 0.99) * 1e3, 2),
        "requests": len(latencies),
        "errors": errors,
    }


# ------------------------------------------------------------------------- load generator


def _rest_request(model: str, x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    tensor: dict[str, Any] = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        tensor["data"] = x.ravel().tolist()
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    raw = x.tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(
        {"inputs": [tensor], "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    ).encode()
    return header + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def _chunked_end(buffer: bytearray, pos: int) -> int:
    """Where a chunked body starting at ``pos`` ends, or -1 while it is incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return -1
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2 + size + 2
        if len(buffer) < pos:
            return -1
        if size == 0:
            return pos


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection sending one prepared request at a time: a load
    generator as lean as wrk's, so that the server, not the client, is what is measured."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        if b"\r\ncontent-length:" in head:  # not inference-header-content-length
            length = int(head.split(b"\r\ncontent-length:", 1)[1].split(b"\r\n", 1)[0])
            done = end + 4 + length if len(self.buffer) >= end + 4 + length else -1
        else:
            done = _chunked_end(self.buffer, end + 4)
        if done >= 0:
            del self.buffer[:done]
            self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("server closed the connection"))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def _rest_load(
    url: str, model: str, x: np.ndarray, binary: bool, concurrency: int, duration: float
) -> dict[str, Any]:
    body, headers = _rest_request(model, x, binary)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    connections = [
        (await loop.create_connection(_HttpConnection, host, int(port)))[1]
        for _ in range(concurrency)
    ]
    start = time.perf_counter()
    measure_from, end = start + WARMUP, start + WARMUP + duration

    async def worker(connection: _HttpConnection) -> None:
        nonlocal errors
        while (now := time.perf_counter()) < end:
            ok = await connection.send(request) == 200
            done = time.perf_counter()
            if now >= measure_from:
                if ok:
                    latencies.append(done - now)
                else:
                    errors += 1

    await asyncio.gather(*(worker(c) for c in connections))
    for c in connections:
        assert c.transport is not None
        c.transport.close()
    return summary(latencies, duration, errors)


async def _grpc_load(
    target: str, model: str, x: np.ndarray, concurrency: int, duration: float
) -> dict[str, Any]:
    import grpc
    from orbiter.inference.protos import grpc_predict_v2_pb2 as pb
    from orbiter.inference.protos import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
        ],
        raw_input_contents=[x.tobytes()],
    )
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, end = start + WARMUP, start + WARMUP + duration
    options = [("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def worker() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < end:
                try:
                    await stub.ModelInfer(request)
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
                done = time.perf_counter()
                if now >= measure_from:
                    if ok:
                        latencies.append(done - now)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summary(latencies, duration, errors)


def client_main(args: argparse.Namespace) -> None:
    x = np.load(args.input)
    if args.client == "rest":
        import uvloop

        result = uvloop.run(
            _rest_load(args.url, args.model, x, args.binary, args.concurrency, args.duration)
        )
    else:
        result = asyncio.run(_grpc_load(args.url, args.model, x, args.concurrency, args.duration))
    print(json.dumps(result))


def run_client(
    kind: str, url: str, model: str, x_path: Path, binary: bool, concurrency: int, duration: float
) -> dict[str, Any]:
    argv = [PY, __file__, "--client", kind, "--url", url, "--model", model, "--input", str(x_path)]
    argv += ["--client-concurrency", str(concurrency), "--duration", str(duration)]
    if binary:
        argv.append("--binary")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------- baselines


def raw_onnxruntime(path: Path, x: np.ndarray, concurrency: int, duration: float) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    session.run(None, feed)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start = time.perf_counter()
    measure_from, end = start + WARMUP, start + WARMUP + duration

    def worker(mine: list[float]) -> None:
        while (now := time.perf_counter()) < end:
            session.run(None, feed)
            if now >= measure_from:
                mine.append(time.perf_counter() - now)

    threads = [threading.Thread(target=worker, args=(lat,)) for lat in latencies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary([v for lat in latencies for v in lat], duration)


# --------------------------------------------------------------------------------- servers


class Server:
    """A server process; its output goes to a log file (a pipe nobody drains would stall it)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_line(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if m := re.search(pattern, self.log.read_text()):
                return m
            time.sleep(0.1)  # polling another process's output: nothing to wait on
        self.stop()
        raise RuntimeError(f"server did not print {pattern!r}: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, model: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=2) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.2)  # polling another process's start: nothing to wait on
    raise RuntimeError(f"{url} never reported {model} ready")


# ----------------------------------------------------------------------------------- setup


def build_models(root: Path, names: list[str]) -> dict[str, tuple[Path, np.ndarray]]:
    """Exports each model (random weights, seeded) into a Triton-style repository."""
    from orbiter.models import build_model, export_onnx

    rng = np.random.default_rng(0)
    built: dict[str, tuple[Path, np.ndarray]] = {}
    for name in names:
        arch, shape = ARCHITECTURES[name]
        x = rng.random(shape, dtype=np.float32)
        path = root / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True)
        export_onnx(build_model(arch, seed=0).eval(), path, np.concatenate([x, x]))
        built[name] = (path, x)
    return built


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--models", default="digits,resnet18")
    p.add_argument("--protocols", default="rest,grpc")
    p.add_argument("--kserve-python", default=None, help="python of a venv with kserve")
    # The load generator's own flags (this file runs itself as the client process).
    p.add_argument("--client", choices=("rest", "grpc"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--binary", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--client-concurrency", dest="concurrency_one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        args.concurrency = args.concurrency_one
        client_main(args)
        return

    levels = [int(c) for c in args.concurrency.split(",")]
    names = args.models.split(",")
    protocols = args.protocols.split(",")
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count()},
        "duration_s": args.duration,
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        models = build_models(repo, names)
        ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
        ours = Server(
            [PY, "-m", "orbiter.cli", "serve", "--model-repo", str(repo), *ports],
            root / "orbiter.log",
        )
        try:
            m = ours.wait_line(r"serving: http [\d.]+:(\d+) grpc [\d.]+:(\d+)")
            our_http, our_grpc = f"http://127.0.0.1:{m[1]}", f"127.0.0.1:{m[2]}"
            for name in names:
                path, x = models[name]
                x_path = root / f"{name}.npy"
                np.save(x_path, x)
                binary = name != "digits"
                peer: Server | None = None
                peer_http = peer_grpc = None
                if args.kserve_python:
                    hp, gp = _free_port(), _free_port()
                    script = str(HERE / "peers" / "kserve_onnx.py")
                    peer = Server(
                        [args.kserve_python, script, str(path), name, str(hp), str(gp)],
                        root / f"kserve-{name}.log",
                    )
                    peer_http, peer_grpc = f"http://127.0.0.1:{hp}", f"127.0.0.1:{gp}"
                    wait_ready(peer_http, name)
                try:
                    for c in levels:
                        raw = raw_onnxruntime(path, x, c, args.duration)
                        for proto in protocols:
                            row: dict[str, Any] = {
                                "model": name,
                                "protocol": proto,
                                "concurrency": c,
                                "raw_onnxruntime": raw,
                            }
                            url = our_http if proto == "rest" else our_grpc
                            row["orbiter"] = run_client(
                                proto, url, name, x_path, binary, c, args.duration
                            )
                            if peer is not None:
                                purl = peer_http if proto == "rest" else peer_grpc
                                assert purl is not None
                                row["kserve"] = run_client(
                                    proto, purl, name, x_path, binary, c, args.duration
                                )
                                row["orbiter_vs_kserve"] = round(
                                    row["orbiter"]["rps"] / max(row["kserve"]["rps"], 1e-9), 2
                                )
                            row["orbiter_vs_raw"] = round(
                                row["orbiter"]["rps"] / max(raw["rps"], 1e-9), 2
                            )
                            print(json.dumps(row), file=sys.stderr, flush=True)
                            results["rows"].append(row)
                finally:
                    if peer is not None:
                        peer.stop()
        finally:
            ours.stop()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
