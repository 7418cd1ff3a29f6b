"""Hot reload under load: 50 clients keep sending while version 2 arrives (through the load
API, or found by the repository poll) and is rolled back. No request fails; every answer's
values are those of the version it names; a batch never mixes versions (the batcher's own
record of each batch is checked against what its requests were answered)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from orbiter.inference import InferenceServer
from orbiter.inference.protos import grpc_predict_v2_pb2 as pb
from orbiter.inference.protos import grpc_predict_v2_pb2_grpc as pb_grpc

from ..converging import until
from .conftest import make_server
from .models import versioned, versioned_model, write_model

CLIENTS = 50
SEEN_PER_PHASE = 300  # answers to requests sent after each switch


@dataclass
class Answer:
    request_id: str
    sent: float
    received: float
    version: int


class Load:
    """``CLIENTS`` tasks each sending one request after another through ``send``, which
    returns (status, model_version, values) for input ``x``."""

    def __init__(self, send: Callable[[str, np.ndarray], Awaitable[tuple[bool, str, Any]]]) -> None:
        self.send = send
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            request_id = f"{client}-{n}"
            x = np.array([[client, n]], dtype=np.float32)
            sent = self._loop.time()
            ok, version, values = await self.send(request_id, x)
            if not ok:
                self.errors.append(f"{request_id}: {version} {values}")
                continue
            if values != versioned(x, int(version)).reshape(-1).tolist():
                self.errors.append(f"{request_id}: version {version} answered {values}")
            self.answers.append(Answer(request_id, sent, self._loop.time(), int(version)))

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(CLIENTS)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def answered_since(self, since: float, count: int = SEEN_PER_PHASE) -> None:
        async def enough() -> bool:
            assert not self.errors, self.errors[:5]
            return sum(a.sent > since for a in self.answers) >= count

        await until(enough, f"{count} answers to requests sent after t={since:.3f}")

    def versions_between(self, start: float, end: float = float("inf")) -> set[int]:
        """Versions answering requests sent after ``start`` and answered before ``end``: a
        request queued before a swap may be answered by the version swapped in (versions are
        resolved when a batch is formed), one sent after it cannot see the version before."""
        return {a.version for a in self.answers if start < a.sent and a.received < end}


def _check_batches(server: InferenceServer, load: Load) -> None:
    """Each recorded batch ran one version, and each of its requests was answered by it."""
    answered = {a.request_id: a.version for a in load.answers}
    batches = server.service.batches("versioned")
    assert batches, "no batches recorded"
    multi = 0
    for batch in batches:
        versions = {answered[r] for r in batch.request_ids if r in answered}
        assert versions <= {batch.version}, (batch, versions)
        multi += len(batch.request_ids) > 1
    assert multi > 0, "under 50 concurrent clients some batches hold several requests"


def _rest_sender(
    http: aiohttp.ClientSession,
) -> Callable[[str, np.ndarray], Awaitable[tuple[bool, str, Any]]]:
    async def send(request_id: str, x: np.ndarray) -> tuple[bool, str, Any]:
        body = {
            "id": request_id,
            "inputs": [
                {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": x.reshape(-1).tolist()}
            ],
        }
        async with http.post("/v2/models/versioned/infer", json=body) as response:
            answer = await response.json()
        if response.status != 200:
            return False, str(response.status), answer
        assert answer["id"] == request_id
        return True, answer["model_version"], answer["outputs"][0]["data"]

    return send


async def _post(http: aiohttp.ClientSession, path: str) -> None:
    async with http.post(path) as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize("inline_below", [1.0, 0.0], ids=["inline-run", "threaded-run"])
async def test_reload_and_rollback_under_load_via_api(repo: Path, inline_below: float) -> None:
    loop = asyncio.get_running_loop()
    async with (
        make_server(repo, inline_below=inline_below) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
        Load(_rest_sender(http)) as load,
    ):
        await load.answered_since(0.0)
        write_model(repo, "versioned", 2, versioned_model(2))
        reload_sent = loop.time()
        await _post(http, "/v2/repository/models/versioned/load")
        loaded = loop.time()
        await load.answered_since(loaded)
        rollback_sent = loop.time()
        await _post(http, "/v2/repository/models/versioned/rollback")
        rolled_back = loop.time()
        await load.answered_since(rolled_back)
    assert not load.errors, load.errors[:5]
    assert load.versions_between(0.0, reload_sent) == {1}
    assert load.versions_between(loaded, rollback_sent) == {2}
    assert load.versions_between(rolled_back) == {1}
    _check_batches(server, load)


async def test_reload_by_polling_under_grpc_load(repo: Path, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with make_server(repo, poll_interval=0.05) as server:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def send(request_id: str, x: np.ndarray) -> tuple[bool, str, Any]:
            request = pb.ModelInferRequest(model_name="versioned", id=request_id)
            request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
            request.raw_input_contents.append(x.tobytes())
            try:
                response = await stub.ModelInfer(request)
            except grpc.aio.AioRpcError as exc:
                return False, exc.code().name, exc.details()
            values = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
            return True, response.model_version, values.tolist()

        try:
            async with Load(send) as load:
                await load.answered_since(0.0)
                # The version folder appears whole: written aside, then renamed into place.
                staged = write_model(
                    tmp_path / "staging", "versioned", 2, versioned_model(2)
                ).parent
                os.rename(staged, repo / "versioned" / "2")
                written = loop.time()
                await until(
                    lambda: _async(2 in load.versions_between(written)),
                    "version 2 found by the poll",
                )
                swapped = max(a.sent for a in load.answers if a.version == 2)
                await load.answered_since(swapped)
                await server.service.rollback("versioned")
                rolled_back = loop.time()
                await load.answered_since(rolled_back)
                await server.repository.poll()  # a poll does not undo a rollback
                polled = loop.time()
                await load.answered_since(polled, 50)
        finally:
            await channel.close()
            vars(stub).clear()
    assert not load.errors, load.errors[:5]
    assert load.versions_between(0.0, written) == {1}
    assert load.versions_between(rolled_back) == {1}
    assert {1, 2} <= {a.version for a in load.answers}
    _check_batches(server, load)


async def _async(value: bool) -> bool:
    return value


async def test_unload_under_load_answers_or_503(repo: Path) -> None:
    async with (
        make_server(repo) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        statuses: list[int] = []
        stop = asyncio.Event()

        async def client() -> None:
            body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
            while not stop.is_set():
                async with http.post("/v2/models/versioned/infer", json=body) as response:
                    statuses.append(response.status)
                    answer = await response.json()
                    if response.status == 503:
                        assert "not ready" in answer["error"] or "not loaded" in answer["error"]

        tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        try:
            await until(lambda: _async(len(statuses) >= 200), "answers before the unload")
            await _post(http, "/v2/repository/models/versioned/unload")
            unloaded = len(statuses)
            await until(lambda: _async(503 in statuses[unloaded:]), "503 after the unload")
        finally:
            stop.set()
            async with asyncio.timeout(10):  # nobody hangs
                await asyncio.gather(*tasks)
        assert set(statuses) <= {200, 503}


async def test_broken_new_version_keeps_the_old_one(server: InferenceServer, repo: Path) -> None:
    write_model(repo, "versioned", 2, b"not an onnx model")
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        async with http.post("/v2/repository/models/versioned/load") as response:
            assert response.status == 503
            error = (await response.json())["error"]
            assert "version 2" in error
        body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
        async with http.post("/v2/models/versioned/infer", json=body) as response:
            answer = await response.json()
            assert answer["model_version"] == "1" and answer["outputs"][0]["data"] == [1001, 1002]
        async with http.post("/v2/repository/index") as response:
            rows = {(r["name"], r["version"]): r for r in await response.json()}
    assert rows[("versioned", "1")]["state"] == "READY"
    assert rows[("versioned", "2")]["state"] == "UNAVAILABLE"
    assert "version 2" in rows[("versioned", "2")]["reason"]
