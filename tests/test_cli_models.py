"""``orbiter models`` and ``orbiter serve`` as a user runs them: train, export, register,
promote, serve by alias, and follow the alias as it moves. Each command is its own process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.converging import until

pytestmark = pytest.mark.slow

ORBITER = [sys.executable, "-m", "orbiter.cli"]


def orbiter(*args: str | Path) -> str:
    out = subprocess.run([*ORBITER, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def infer(port: int, model: str, x: np.ndarray) -> dict[str, Any]:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        result: dict[str, Any] = json.load(resp)
    return result


class Serving:
    """`orbiter serve` in its own process; its first lines name the versions and ports."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen(
            [*ORBITER, "serve", *map(str, args)], stdout=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.http_port = 0
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("serving: "):
                    self.http_port = int(line.split()[2].rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read)
        self.reader.start()
        if not ready.wait(120) or not self.http_port:
            self.stop()
            pytest.fail(f"orbiter serve did not start: {self.lines}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.reader.join()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


async def test_train_export_register_and_serve_the_production_alias(tmp_path: Path) -> None:
    from orbiter.models import load_digits_split, onnx_predict

    data = tmp_path / "data"
    out = orbiter("models", "train", "digits-edge", "--out", tmp_path / "edge", "--quiet")
    assert "test accuracy 0.9" in out or "test accuracy 0.8" in out, out
    metrics = json.loads((tmp_path / "edge" / "metrics.json").read_text())
    assert metrics["dataset"] == "digits@seed0" and len(metrics["epochs"]) > 1

    report = json.loads(
        orbiter(
            "models",
            "export",
            "digits-edge",
            "--weights",
            tmp_path / "edge" / "model.pt",
            "--out",
            tmp_path / "edge.onnx",
            "--int8",
            tmp_path / "edge-int8.onnx",
        )
    )
    assert report["export"]["max_abs_diff"] <= 1e-4
    assert abs(report["int8"]["accuracy_change"]) < 0.05

    first = orbiter(
        "models",
        "register",
        "digits-edge",
        tmp_path / "edge.onnx",
        "--data-dir",
        data,
        "--metrics",
        tmp_path / "edge" / "metrics.json",
        "--alias",
        "production",
    )
    assert first.startswith("digits-edge version 1 (production)")
    orbiter(
        "models",
        "register",
        "digits-edge",
        tmp_path / "edge-int8.onnx",
        "--data-dir",
        data,
        "--parent",
        "1",
        "--job",
        "default/quantize",
    )
    listed = orbiter("models", "list", "digits-edge", "--data-dir", data, "-o", "json")
    versions = json.loads(listed)
    assert [(v["version"], v["parent_version"], v["job"]) for v in versions] == [
        (1, None, None),
        (2, 1, "default/quantize"),
    ]
    assert versions[0]["dataset"] == "digits@seed0"
    listing = orbiter("models", "list", "--data-dir", data)
    assert "digits-edge" in listing and "production=1" in listing

    split = load_digits_split(seed=0)
    x = split.x_test[:1]
    server = Serving(
        "--model",
        "digits-edge@production",
        "--data-dir",
        data,
        "--poll",
        "0.2",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
    )
    try:
        assert "digits-edge@production: version 1\n" in server.lines
        answer = infer(server.http_port, "digits-edge", x)
        assert answer["model_version"] == "1"
        expected = onnx_predict(tmp_path / "edge.onnx", x)
        np.testing.assert_allclose(answer["outputs"][0]["data"], expected.ravel(), atol=1e-5)

        orbiter("models", "alias", "digits-edge", "production", "2", "--data-dir", data)

        async def moved() -> bool:
            return infer(server.http_port, "digits-edge", x)["model_version"] == "2"

        await until(moved, "the server to follow production to version 2", within=60)
    finally:
        assert server.stop() == 0


def test_serve_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    out = subprocess.run([*ORBITER, "serve"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--model-repo" in out.stderr
    out = subprocess.run(
        [*ORBITER, "serve", "--model", "digits", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "NAME@ALIAS" in out.stderr
    out = subprocess.run(
        [*ORBITER, "models", "list", "nope", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "nope" in out.stderr and "Traceback" not in out.stderr
