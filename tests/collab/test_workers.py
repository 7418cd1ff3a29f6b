"""The joint-inference worker processes (``python -m orbiter.collab.workers``), run as real
subprocesses on our digits models: scenario S1 through the edge worker's REST endpoint, the
reports to a local controller (a test double), the cloud killed mid-run, and configuration
errors exiting 2 with a message."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from orbiter.collab import CloudClient, OnnxEstimator

from .digits import DigitsModels, train_and_export
from .doubles import FakeLocalController, serve

pytestmark = pytest.mark.slow

SERVING = re.compile(rb"^serving: http (\S+):(\d+)$")
THRESHOLD = "0.9"
HEM = {
    "HEM_NAME": "CrossEntropy",
    "HEM_PARAMETERS": json.dumps([{"key": "threshold_cross_entropy", "value": THRESHOLD}]),
}
START_TIMEOUT = 60.0
# Variables of the workers' contract: none leaks in from the environment the tests run in.
CONTRACT = {
    "NAMESPACE", "SERVICE_NAME", "JOB_NAME", "WORKER_NAME", "LC_SERVER", "LC_PERIOD",
    "MODEL_URL", "BIG_MODEL_IP", "BIG_MODEL_PORT", "BIG_MODEL_NAME", "BIG_MODEL_DEADLINE",
    "BIG_MODEL_BIND_PORT", "BIG_MODEL_BIND_IP", "HEM_NAME", "HEM_PARAMETERS", "MINING_MODE",
    "EDGE_BIND_PORT", "EDGE_BIND_IP", "POST_PROCESS", "LOG_LEVEL",
}  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsModels:
    return train_and_export(tmp_path_factory.mktemp("digits"), seed=0)


def worker_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in CONTRACT and k.upper() not in CONTRACT}
    return base | {"NAMESPACE": "default", "SERVICE_NAME": "digits"} | env


@dataclass
class Worker:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    async def stop(self) -> int:
        """SIGTERM, then the exit status (waited for: nothing is left behind)."""
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.communicate()
        assert self.proc.returncode is not None
        return self.proc.returncode


StartWorker = Callable[..., Awaitable[Worker]]


@pytest_asyncio.fixture
async def start_worker(tmp_path: Path) -> AsyncIterator[StartWorker]:
    """Starts ``joint-cloud``/``joint-edge`` with an environment and returns once it printed
    its port; every worker started is stopped and waited for at the end."""
    started: list[Worker] = []

    async def start(kind: str, **env: str) -> Worker:
        log = tmp_path / f"{kind}-{len(started)}.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "orbiter.collab.workers",
                kind,
                env=worker_env(**env),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        worker = Worker(proc, 0, log)
        started.append(worker)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        match = SERVING.match(line.strip())
        assert match, f"{kind} printed {line!r}; its log:\n{log.read_text()}"
        worker.port = int(match[2])
        return worker

    yield start
    for worker in started:
        if worker.proc.returncode is None:
            worker.proc.kill()
        await worker.proc.communicate()


def request(x: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    return {"inputs": [tensor | {"data": x.ravel().tolist()}]}


async def infer(session: aiohttp.ClientSession, port: int, x: np.ndarray) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
    async with session.post(url, json=request(x)) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


def predicted(answer: Mapping[str, Any]) -> int:
    [output] = answer["outputs"]
    assert output["name"] == "logits" and output["shape"] == [1, 10]
    probabilities = np.asarray(output["data"], dtype=np.float32)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)  # the softmax post-process
    return int(probabilities.argmax())


async def cloud_and_edge(
    start_worker: StartWorker, digits: DigitsModels, **edge_env: str
) -> tuple[Worker, Worker]:
    cloud = await start_worker(
        "joint-cloud", MODEL_URL=str(digits.cloud_onnx), BIG_MODEL_BIND_PORT="0"
    )
    edge = await start_worker(
        "joint-edge",
        MODEL_URL=str(digits.edge_onnx),
        BIG_MODEL_IP="127.0.0.1",
        BIG_MODEL_PORT=str(cloud.port),
        BIG_MODEL_NAME="digits",
        EDGE_BIND_PORT="0",
        **HEM,
        **edge_env,
    )
    return cloud, edge


async def test_s1_through_the_edge_worker_and_its_reports(
    start_worker: StartWorker, digits: DigitsModels
) -> None:
    x, y = digits.split.x_test, digits.split.y_test
    lc = FakeLocalController()
    async with serve(lc.app) as lc_port:
        cloud, edge = await cloud_and_edge(
            start_worker,
            digits,
            LC_SERVER=f"http://127.0.0.1:{lc_port}",
            WORKER_NAME="digits-edge-x7k2p",
        )
        # Cloud-only: the cloud worker itself, in batches (the server's default cap is 64).
        with CloudClient("127.0.0.1", cloud.port, "digits") as client:
            batches = [x[i : i + 64] for i in range(0, len(x), 64)]
            cloud_logits = np.concatenate(
                [await asyncio.to_thread(client.infer, batch) for batch in batches]
            )
        cloud_only = float((cloud_logits.argmax(-1) == y).mean())
        edge_only = OnnxEstimator(digits.edge_onnx).evaluate((x, y))["accuracy"]

        async with aiohttp.ClientSession() as session:
            answers = [await infer(session, edge.port, x[i : i + 1]) for i in range(len(x))]
            base = f"http://127.0.0.1:{edge.port}/v2"
            async with session.get(f"{base}/health/ready") as response:
                assert response.status == 200 and (await response.json()) == {"ready": True}
            async with session.get(f"{base}/models/digits") as response:
                metadata = await response.json()
                assert metadata["inputs"] == [
                    {"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}
                ]
            async with session.post(f"{base}/models/other/infer", json=request(x[:1])) as r:
                assert r.status == 404
            async with session.post(f"{base}/models/digits/infer", json=request(x[0])) as r:
                assert r.status == 400 and "does not fit" in (await r.json())["error"]

        assert await edge.stop() == 0  # SIGTERM: a clean exit, after the last report
        reports = [lc.bodies.get_nowait() for _ in range(lc.bodies.qsize())]
    assert await cloud.stop() == 0

    joint = float(np.mean([predicted(a) == label for a, label in zip(answers, y, strict=True)]))
    hard = [a["parameters"]["is_hard_example"] for a in answers]
    by = [a["parameters"]["answered_by"] for a in answers]
    ratio = sum(hard) / len(answers)
    print(f"\nworkers S1: edge {edge_only:.4f} cloud {cloud_only:.4f} joint {joint:.4f} "
          f"upload {ratio:.4f}")  # fmt: skip
    assert edge_only >= 0.85 and cloud_only >= 0.97
    assert ratio <= 0.30
    assert joint >= cloud_only - 0.02
    assert by == ["cloud" if h else "edge" for h in hard]  # the cloud was up throughout

    assert reports, "the local controller received no report"
    last = reports[-1]
    assert last["name"] == "digits-edge-x7k2p" and last["ownerName"] == "digits"
    assert last["ownerKind"] == "jointinferenceservice"
    info = last["ownerInfo"]
    assert info["inferenceNumber"] == len(answers) and info["hardExampleNumber"] == sum(hard)
    assert info["uploadCloudRatio"] == ratio  # the true ratio: each hard example counted once
    assert info["fallbackNumber"] == 0


async def test_the_edge_answers_everything_after_the_cloud_is_killed(
    start_worker: StartWorker, digits: DigitsModels
) -> None:
    x = digits.split.x_test
    edge_labels = OnnxEstimator(digits.edge_onnx).predict(x).argmax(-1)
    half = len(x) // 2
    cloud, edge = await cloud_and_edge(start_worker, digits, BIG_MODEL_DEADLINE="5")
    async with aiohttp.ClientSession() as session:
        before = [await infer(session, edge.port, x[i : i + 1]) for i in range(half)]
        cloud.proc.kill()  # SIGKILL mid-run: no goodbye on the connection the edge keeps
        await cloud.proc.communicate()
        after = [await infer(session, edge.port, x[i : i + 1]) for i in range(half, len(x))]
    assert await edge.stop() == 0

    assert any(a["parameters"]["answered_by"] == "cloud" for a in before)
    assert all(a["parameters"]["answered_by"] == "edge" for a in after)
    hard_after = sum(a["parameters"]["is_hard_example"] for a in after)
    assert hard_after > 0  # hard examples met the dead cloud, and the edge answered them
    assert [predicted(a) for a in after] == edge_labels[half:].tolist()
    assert "cloud inference failed, the edge answers instead" in edge.log.read_text()


def corrupt_model(tmp_path: Path) -> str:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"not a model")
    return str(path)


BAD_THRESHOLD = '[{"key": "threshold_cross_entropy", "value": "high"}]'
CONFIG_ERRORS = {  # id: (worker, environment, what its one line of stderr says)
    "edge-no-model": ("joint-edge", {}, "MODEL_URL is not set"),
    "cloud-no-model": ("joint-cloud", {}, "MODEL_URL is not set"),
    "no-such-file": ("joint-cloud", {"MODEL_URL": "/no/big.onnx"}, "'/no/big.onnx': no such file"),
    "corrupt-model": ("joint-edge", {"MODEL_URL": "corrupt"}, "cannot load"),
    "unknown-hem": (
        "joint-edge",
        {"MODEL_URL": "edge", "HEM_NAME": "Crystal"},
        "unknown hard_example_mining 'Crystal'",
    ),
    "non-numeric-parameter": (
        "joint-edge",
        {"MODEL_URL": "edge", "HEM_NAME": "CrossEntropy", "HEM_PARAMETERS": BAD_THRESHOLD},
        "threshold_cross_entropy='high' is not a number",
    ),
    "bad-port": (
        "joint-edge",
        {"MODEL_URL": "edge", "BIG_MODEL_PORT": "http"},
        "BIG_MODEL_PORT='http' is not an integer",
    ),
    "port-out-of-range": (
        "joint-cloud",
        {"MODEL_URL": "edge", "BIG_MODEL_BIND_PORT": "99999"},
        "BIG_MODEL_BIND_PORT='99999' is out of range",
    ),
    "unknown-post-process": (
        "joint-edge",
        {"MODEL_URL": "edge", "POST_PROCESS": "sigmoid"},
        "unknown post_process_callback 'sigmoid'",
    ),
}


@pytest.mark.parametrize(
    ("kind", "env", "message"), list(CONFIG_ERRORS.values()), ids=list(CONFIG_ERRORS)
)
async def test_configuration_errors_exit_2_naming_the_problem(
    kind: str, env: dict[str, str], message: str, digits: DigitsModels, tmp_path: Path
) -> None:
    files = {"edge": str(digits.edge_onnx), "corrupt": corrupt_model(tmp_path)}
    if "MODEL_URL" in env:
        env = env | {"MODEL_URL": files.get(env["MODEL_URL"], env["MODEL_URL"])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orbiter.collab.workers",
        kind,
        env=worker_env(EDGE_BIND_PORT="0", BIG_MODEL_BIND_PORT="0") | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert proc.returncode == 2, stderr.decode()
    assert stdout == b""  # it never served
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{kind}: "), lines
    assert message in lines[0]
