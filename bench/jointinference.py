"""Joint-inference benchmark: end-to-end latency of the edge worker answering alone against
answering with the cloud's help, and the edge worker's requests/s.

Prints one JSON document. The digits models are trained (seeded) and exported; then, each in
its own process, ``python -m orbiter.collab.workers joint-cloud`` serves the big model and
``joint-edge`` serves the edge's endpoint in three configurations:

- ``edge_only`` (HEM ``EdgeOnly``): the baseline, no cloud call ever;
- ``joint`` (HEM ``CrossEntropy``, threshold 0.9): hard examples (about 22 %) go to the cloud;
- ``cloud_only`` (HEM ``CloudOnly``): every request goes through the cloud.

The load generator (its own process, the keep-alive HTTP client of ``bench/inference.py``)
cycles through the 450 held-out digits at concurrency 1 and 8, closed loop. Everything is on
loopback, so "cloud" latency is the protocol's cost, not a WAN's.

    .venv/bin/python bench/jointinference.py [--duration 4] [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import WARMUP, _HttpConnection, summary

PY = sys.executable
SERVING = re.compile(r"serving: http ([\d.]+):(\d+)")
HEMS = {
    "edge_only": ("EdgeOnly", []),
    "joint": ("CrossEntropy", [{"key": "threshold_cross_entropy", "value": "0.9"}]),
    "cloud_only": ("CloudOnly", []),
}


class Worker:
    """A worker process; its output goes to a log file so it can never block on a pipe."""

    def __init__(self, role: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [PY, "-m", "orbiter.collab.workers", role],
                env=os.environ | env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            if m := SERVING.search(log.read_text()):
                self.port = int(m[2])
                return
            time.sleep(0.1)  # polling another process's output: nothing to wait on
        self.stop()
        raise RuntimeError(f"{role} did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


async def _load(port: int, bodies: list[bytes], concurrency: int, duration: float) -> Any:
    head = "POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "Content-Type: application/json\r\n"
    requests = [f"{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
    loop = asyncio.get_running_loop()
    connections = [
        (await loop.create_connection(_HttpConnection, "127.0.0.1", port))[1]
        for _ in range(concurrency)
    ]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, end = start + WARMUP, start + WARMUP + duration

    async def worker(i: int, connection: _HttpConnection) -> None:
        nonlocal errors
        n = i
        while (now := time.perf_counter()) < end:
            ok = await connection.send(requests[n % len(requests)]) == 200
            n += concurrency
            if now >= measure_from:
                if ok:
                    latencies.append(time.perf_counter() - now)
                else:
                    errors += 1

    await asyncio.gather(*(worker(i, c) for i, c in enumerate(connections)))
    for c in connections:
        assert c.transport is not None
        c.transport.close()
    return summary(latencies, duration, errors)


def client_main(args: argparse.Namespace) -> None:
    import uvloop

    bodies = Path(args.bodies).read_bytes().split(b"\n")
    print(json.dumps(uvloop.run(_load(args.port, bodies, args.client_c, args.duration))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--client-port", dest="port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    p.add_argument("--client-concurrency", dest="client_c", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.port:
        client_main(args)
        return

    from orbiter.models import export_onnx, train_digits

    levels = [int(c) for c in args.concurrency.split(",")]
    result: dict[str, Any] = {"machine": {"cores": os.cpu_count()}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-joint-") as tmp:
        root = Path(tmp)
        paths = {}
        for name in ("digits-edge", "digits-cloud"):
            model, _, split = train_digits(name, seed=0)
            paths[name] = root / f"{name}.onnx"
            export_onnx(model, paths[name], split.x_test[:1], check_data=split.x_test)
        bodies = root / "bodies.jsonl"
        bodies.write_bytes(
            b"\n".join(
                json.dumps(
                    {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                 "data": np.asarray(x).ravel().tolist()}]}
                ).encode()
                for x in split.x_test
            )
        )  # fmt: skip
        common = {"NAMESPACE": "default", "SERVICE_NAME": "digits", "LOG_LEVEL": "WARNING"}
        cloud = Worker(
            "joint-cloud",
            common
            | {
                "MODEL_URL": str(paths["digits-cloud"]),
                "BIG_MODEL_NAME": "digits-cloud",
                "BIG_MODEL_BIND_PORT": "0",
            },
            root / "cloud.log",
        )
        try:
            for config, (hem, parameters) in HEMS.items():
                edge = Worker(
                    "joint-edge",
                    common
                    | {
                        "MODEL_URL": str(paths["digits-edge"]),
                        "BIG_MODEL_IP": "127.0.0.1",
                        "BIG_MODEL_PORT": str(cloud.port),
                        "BIG_MODEL_NAME": "digits-cloud",
                        "HEM_NAME": hem,
                        "HEM_PARAMETERS": json.dumps(parameters),
                        "EDGE_BIND_PORT": "0",
                    },
                    root / f"edge-{config}.log",
                )
                try:
                    for c in levels:
                        client = ["--client-port", str(edge.port), "--bodies", str(bodies)]
                        client += ["--client-concurrency", str(c), "--duration", str(args.duration)]
                        out = subprocess.run(
                            [PY, __file__, *client],
                            capture_output=True,
                            text=True,
                            timeout=args.duration + 120,
                        )
                        if out.returncode != 0:
                            raise RuntimeError(out.stderr[-2000:])
                        row = {"config": config, "hem": hem, "concurrency": c}
                        row |= json.loads(out.stdout.strip().splitlines()[-1])
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        result["rows"].append(row)
                finally:
                    edge.stop()
        finally:
            cloud.stop()
    base = {r["concurrency"]: r for r in result["rows"] if r["config"] == "edge_only"}
    for row in result["rows"]:
        row["p50_vs_edge_only"] = round(row["p50_ms"] / base[row["concurrency"]]["p50_ms"], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
