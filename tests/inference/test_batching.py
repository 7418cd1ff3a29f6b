"""Dynamic batching: concurrent requests share batches up to max_batch_size rows (never
more), requests whose non-batch dims differ go in separate batches, and every request gets
its own rows back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from .conftest import make_server
from .models import fixed_model, linear, linear_model, lookup_model, ragged_model, write_model

BATCHED = """
max_batch_size: 4
dynamic_batching { max_queue_delay_microseconds: 500000 }
"""


async def _infer(
    http: aiohttp.ClientSession, model: str, x: np.ndarray, request_id: str
) -> tuple[int, Any]:
    body = {
        "id": request_id,
        "inputs": [
            {
                "name": "x",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ],
    }
    async with http.post(f"/v2/models/{model}/infer", json=body) as response:
        return response.status, await response.json()


async def test_batches_fill_up_to_max_batch_size(tmp_path: Path) -> None:
    write_model(tmp_path, "linear", 1, linear_model(), BATCHED)
    rng = np.random.default_rng(1)
    rows = [1, 2, 1, 3, 1, 1, 2, 1, 1, 3, 1, 1]  # 18 rows: at least 5 batches of <= 4
    inputs = {f"r{i}": rng.normal(size=(n, 4)).astype(np.float32) for i, n in enumerate(rows)}
    async with (
        make_server(tmp_path) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        answers = await asyncio.gather(
            *(_infer(http, "linear", x, rid) for rid, x in inputs.items())
        )
        too_big = await _infer(http, "linear", np.zeros((5, 4), np.float32), "big")
    for (status, answer), (rid, x) in zip(answers, inputs.items(), strict=True):
        assert status == 200 and answer["id"] == rid
        np.testing.assert_allclose(
            np.array(answer["outputs"][0]["data"]).reshape(-1, 3), linear(x), rtol=1e-5
        )
    assert too_big[0] == 400 and "max_batch_size 4" in too_big[1]["error"]
    batches = server.service.batches("linear")
    assert sorted(r for b in batches for r in b.request_ids) == sorted(inputs)
    assert max(b.rows for b in batches) <= 4
    assert all(b.rows == sum(inputs[r].shape[0] for r in b.request_ids) for b in batches)
    assert any(len(b.request_ids) > 1 for b in batches)


async def test_mismatched_dims_batch_separately(tmp_path: Path) -> None:
    write_model(
        tmp_path, "ragged", 1, ragged_model(), "max_batch_size: 8\n" + BATCHED.split("\n", 2)[2]
    )
    inputs = {
        f"k{width}-{i}": np.full((1, width), i, dtype=np.float32)
        for i in range(4)
        for width in (3, 5)
    }
    async with (
        make_server(tmp_path) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        answers = await asyncio.gather(
            *(_infer(http, "ragged", x, rid) for rid, x in inputs.items())
        )
    for (status, answer), x in zip(answers, inputs.values(), strict=True):
        assert status == 200, answer
        assert answer["outputs"][0]["shape"] == list(x.shape)
        assert answer["outputs"][0]["data"] == (2 * x).reshape(-1).tolist()
    batches = server.service.batches("ragged")
    for batch in batches:
        assert len({rid.split("-")[0] for rid in batch.request_ids if rid}) == 1, batch
    assert any(len(b.request_ids) > 1 for b in batches)


async def test_unbatched_model_runs_one_request_at_a_time(tmp_path: Path) -> None:
    write_model(tmp_path, "fixed", 1, fixed_model())
    inputs = {f"f{i}": np.full((2, 2), i, dtype=np.float32) for i in range(10)}
    async with (
        make_server(tmp_path) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        answers = await asyncio.gather(
            *(_infer(http, "fixed", x, rid) for rid, x in inputs.items())
        )
        status, answer = await _infer(http, "fixed", np.zeros((1, 2, 2), np.float32), "rank")
    for (status_i, answer_i), x in zip(answers, inputs.values(), strict=True):
        assert status_i == 200 and answer_i["outputs"][0]["data"] == (2 * x).reshape(-1).tolist()
    assert status == 400 and "[2, 2]" in answer["error"]
    assert all(len(b.request_ids) == 1 for b in server.service.batches("fixed"))


async def test_a_request_failing_in_the_run_does_not_fail_its_batch(tmp_path: Path) -> None:
    write_model(tmp_path, "lookup", 1, lookup_model(), BATCHED)
    indices = {"ok-1": [1], "ok-2": [2, 3], "bad": [100]}

    async def lookup(http: aiohttp.ClientSession, rid: str, i: list[int]) -> tuple[int, Any]:
        body = {
            "id": rid,
            "inputs": [{"name": "i", "shape": [len(i)], "datatype": "INT64", "data": i}],
        }
        async with http.post("/v2/models/lookup/infer", json=body) as response:
            return response.status, await response.json()

    async with (
        make_server(tmp_path) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        answers = dict(
            zip(
                indices,
                await asyncio.gather(*(lookup(http, r, i) for r, i in indices.items())),
                strict=True,
            )
        )
    assert answers["ok-1"][0] == 200 and answers["ok-1"][1]["outputs"][0]["data"] == [10]
    assert answers["ok-2"][0] == 200 and answers["ok-2"][1]["outputs"][0]["data"] == [20, 30]
    # They were batched together (4 rows: the batch target) and the batch failed; then each
    # ran alone, and only the good ones ran to completion.
    assert sorted(b.request_ids for b in server.service.batches("lookup")) == [("ok-1",), ("ok-2",)]
    status, answer = answers["bad"]
    assert status == 400 and "out of data bounds" in answer["error"]
