"""The Open Inference Protocol over REST, JSON and binary tensors, and its errors."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import aiohttp
import numpy as np
import pytest

from .conftest import CAP
from .models import linear, versioned

X = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)


async def _get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path) as response:
        return response.status, await response.json()


async def _infer(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as response:
        return response.status, await response.json()


def _x_input(x: np.ndarray = X, nested: bool = False) -> dict[str, Any]:
    data = x.tolist() if nested else x.reshape(-1).tolist()
    return {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": data}


async def test_health_and_server_metadata(http: aiohttp.ClientSession) -> None:
    assert await _get(http, "/v2/health/live") == (200, {"live": True})
    assert await _get(http, "/v2/health/ready") == (200, {"ready": True})
    status, meta = await _get(http, "/v2")
    assert status == 200
    assert meta["name"] == "orbiter" and meta["version"]
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


async def test_model_metadata_and_readiness(http: aiohttp.ClientSession) -> None:
    status, meta = await _get(http, "/v2/models/linear")
    assert status == 200
    assert meta == {
        "name": "linear",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert await _get(http, "/v2/models/linear/versions/1") == (200, meta)
    status, fixed = await _get(http, "/v2/models/fixed")
    assert fixed["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 2]}]
    assert (await _get(http, "/v2/models/linear/ready"))[0] == 200
    assert (await _get(http, "/v2/models/linear/versions/1/ready"))[0] == 200
    status, body = await _get(http, "/v2/models/linear/versions/7/ready")
    assert status == 400 and "not ready" in body["error"]
    status, body = await _get(http, "/v2/models/nope/ready")
    assert status == 404 and "nope" in body["error"]


@pytest.mark.parametrize("nested", [False, True])
async def test_infer_json(http: aiohttp.ClientSession, nested: bool) -> None:
    body = {"id": "req-7", "inputs": [_x_input(nested=nested)]}
    status, answer = await _infer(http, "/v2/models/linear/infer", body)
    assert status == 200, answer
    assert answer["model_name"] == "linear" and answer["model_version"] == "1"
    assert answer["id"] == "req-7"
    [y] = answer["outputs"]
    assert y["name"] == "y" and y["datatype"] == "FP32" and y["shape"] == [2, 3]
    np.testing.assert_allclose(np.array(y["data"]).reshape(2, 3), linear(X), rtol=1e-6)


async def test_infer_explicit_version_and_int64(http: aiohttp.ClientSession) -> None:
    x = [[1.5, 2.5]]
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": x}]}
    status, answer = await _infer(http, "/v2/models/versioned/versions/1/infer", body)
    assert status == 200 and answer["model_version"] == "1" and "id" not in answer
    assert answer["outputs"][0]["data"] == versioned(np.array(x), 1).reshape(-1).tolist()
    body = {
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 2**40]}]
    }
    status, answer = await _infer(http, "/v2/models/int64/infer", body)
    assert status == 200
    assert answer["outputs"][0] == {
        "name": "y",
        "datatype": "INT64",
        "shape": [2, 2],
        "data": [2, 3, 4, 2**40 + 1],
    }


async def test_outputs_subset_in_order(http: aiohttp.ClientSession) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((2, 3), dtype=np.float32)
    inputs = [
        {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": a.reshape(-1).tolist()},
        {"name": "b", "shape": [2, 3], "datatype": "FP32", "data": b.reshape(-1).tolist()},
    ]
    status, answer = await _infer(
        http, "/v2/models/pair/infer", {"inputs": inputs, "outputs": [{"name": "diff"}]}
    )
    assert status == 200
    assert [o["name"] for o in answer["outputs"]] == ["diff"]
    assert answer["outputs"][0]["data"] == (a - b).reshape(-1).tolist()
    body = {"inputs": inputs, "outputs": [{"name": "diff"}, {"name": "sum"}]}
    status, answer = await _infer(http, "/v2/models/pair/infer", body)
    assert [o["name"] for o in answer["outputs"]] == ["diff", "sum"]


def _binary_request(header: dict[str, Any], *tensors: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    body = head + b"".join(t.tobytes() for t in tensors)
    return body, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def _binary_response(
    raw: bytes, header_length: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    header = json.loads(raw[:header_length])
    arrays = {}
    offset = header_length
    for output in header["outputs"]:
        if "data" in output:
            continue
        size = output["parameters"]["binary_data_size"]
        data = np.frombuffer(raw[offset : offset + size], dtype=np.float32)
        arrays[output["name"]] = data.reshape(output["shape"])
        offset += size
    assert offset == len(raw)
    return header, arrays


async def test_infer_binary_both_ways(http: aiohttp.ClientSession) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 0.5, dtype=np.float32)
    header: dict[str, Any] = {
        "id": "bin",
        "inputs": [
            {
                "name": "a",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 24},
            },
            {
                "name": "b",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 24},
            },
        ],
        "outputs": [
            {"name": "sum", "parameters": {"binary_data": True}},
            {"name": "diff", "parameters": {"binary_data": False}},
        ],
    }
    body, headers = _binary_request(header, a, b)
    async with http.post("/v2/models/pair/infer", data=body, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        length = int(response.headers["Inference-Header-Content-Length"])
        raw = await response.read()
    answer, arrays = _binary_response(raw, length)
    assert answer["id"] == "bin"
    sum_out, diff_out = answer["outputs"]
    assert sum_out["parameters"] == {"binary_data_size": 24} and "data" not in sum_out
    np.testing.assert_array_equal(arrays["sum"], a + b)
    assert diff_out["data"] == (a - b).reshape(-1).tolist()
    # All outputs binary through the request parameter; the JSON input mixed with a binary one.
    header = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": a.reshape(-1).tolist()},
            {
                "name": "b",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 24},
            },
        ],
    }
    body, headers = _binary_request(header, b)
    async with http.post("/v2/models/pair/infer", data=body, headers=headers) as response:
        assert response.status == 200
        raw = await response.read()
        _, arrays = _binary_response(raw, int(response.headers["Inference-Header-Content-Length"]))
    np.testing.assert_array_equal(arrays["sum"], a + b)
    np.testing.assert_array_equal(arrays["diff"], a - b)


BAD_REQUESTS = [
    pytest.param(
        "linear",
        {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
        ["'z'", "'x'"],
        id="unknown-input",
    ),
    pytest.param(
        "pair",
        {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
        ["missing input", "'b'"],
        id="missing-input",
    ),
    pytest.param(
        "linear",
        {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]},
        ["'x'", "[-1, 4]", "[1, 5]"],
        id="wrong-shape",
    ),
    pytest.param(
        "linear",
        {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
        ["'x'", "[-1, 4]", "[4]"],
        id="wrong-rank",
    ),
    pytest.param(
        "linear",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]},
        ["'x'", "FP32", "INT64"],
        id="wrong-datatype",
    ),
    pytest.param(
        "linear",
        {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3]}]},
        ["'x'", "8 elements", "3"],
        id="element-count",
    ),
    pytest.param(
        "linear",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FLOAT", "data": [1, 2, 3, 4]}]},
        ["'x'", "unknown datatype", "FLOAT"],
        id="unknown-datatype",
    ),
    pytest.param(
        "linear",
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}
            ]
        },
        ["'x'", "FP32"],
        id="non-numeric-data",
    ),
    pytest.param(
        "linear",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2], [3]]}]},
        ["'x'"],
        id="ragged-data",
    ),
    pytest.param(
        "linear",
        {"inputs": [{"name": "x", "shape": [65, 4], "datatype": "FP32", "data": [0.0] * 260}]},
        ["batch size 65", "max_batch_size 64"],
        id="over-max-batch",
    ),
    pytest.param(
        "linear",
        {"inputs": [_x_input()], "outputs": [{"name": "q"}]},
        ["unknown output 'q'", "'y'"],
        id="unknown-output",
    ),
    pytest.param("linear", {"inputs": []}, ["inputs"], id="no-inputs"),
    pytest.param("linear", [1, 2], ["JSON object"], id="not-an-object"),
]


@pytest.mark.parametrize(("model", "body", "needles"), BAD_REQUESTS)
async def test_bad_requests_are_400_naming_the_problem(
    http: aiohttp.ClientSession, model: str, body: Any, needles: list[str]
) -> None:
    status, answer = await _infer(http, f"/v2/models/{model}/infer", body)
    assert status == 400, answer
    for needle in needles:
        assert needle in answer["error"], (needle, answer)
    status, _ = await _infer(http, "/v2/models/linear/infer", {"inputs": [_x_input()]})
    assert status == 200  # and the server still answers


async def test_malformed_json_and_binary(http: aiohttp.ClientSession) -> None:
    async with http.post("/v2/models/linear/infer", data=b'{"inputs": [') as response:
        assert response.status == 400
        assert "malformed JSON" in (await response.json())["error"]
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 16},
            }
        ]
    }
    body, headers = _binary_request(header, np.zeros(3, dtype=np.float32))
    async with http.post("/v2/models/linear/infer", data=body, headers=headers) as response:
        assert response.status == 400
        assert "overruns" in (await response.json())["error"]
    header["inputs"][0]["parameters"] = {"binary_data_size": 12}
    body, headers = _binary_request(header, np.zeros(3, dtype=np.float32))
    async with http.post("/v2/models/linear/infer", data=body, headers=headers) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert "'x'" in error and "16 bytes" in error and "12" in error
    headers["Inference-Header-Content-Length"] = "many"
    async with http.post("/v2/models/linear/infer", data=body, headers=headers) as response:
        assert response.status == 400
        assert "Inference-Header-Content-Length" in (await response.json())["error"]


async def test_unknown_model_and_version_are_404(http: aiohttp.ClientSession) -> None:
    body = {"inputs": [_x_input()]}
    status, answer = await _infer(http, "/v2/models/nope/infer", body)
    assert status == 404 and "nope" in answer["error"]
    status, answer = await _infer(http, "/v2/models/linear/versions/3/infer", body)
    assert status == 404 and "version '3'" in answer["error"]
    status, answer = await _get(http, "/v2/models/linear/versions/3")
    assert status == 404
    status, answer = await _get(http, "/v2/models/nope")
    assert status == 404


async def test_over_the_size_cap(http: aiohttp.ClientSession) -> None:
    rows = CAP // 16 + 1  # FP32 [rows, 4]: just over the cap in binary
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [rows, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": rows * 16},
            }
        ]
    }
    body, headers = _binary_request(header, np.zeros((rows, 4), dtype=np.float32))
    async with http.post(
        "/v2/models/linear/infer", data=io.BytesIO(body), headers=headers
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert str(CAP) in error and "max_request_bytes" in error

    async def chunks() -> Any:  # no Content-Length: counted while read
        for _ in range(4):
            yield b" " * (CAP // 3)

    async with http.post("/v2/models/linear/infer", data=chunks()) as response:
        assert response.status == 400
        assert "max_request_bytes" in (await response.json())["error"]
    status, _ = await _infer(http, "/v2/models/linear/infer", {"inputs": [_x_input()]})
    assert status == 200


async def test_repository_endpoints(http: aiohttp.ClientSession) -> None:
    async with http.post("/v2/repository/index") as response:
        index = await response.json()
    assert {"name": "linear", "version": "1", "state": "READY", "reason": ""} in index
    async with http.post("/v2/repository/models/linear/unload") as response:
        assert response.status == 200
    status, answer = await _infer(http, "/v2/models/linear/infer", {"inputs": [_x_input()]})
    assert status == 503 and "unloaded" in answer["error"]
    assert (await _get(http, "/v2/models/linear/ready"))[0] == 400
    async with http.post("/v2/repository/index", json={"ready": True}) as response:
        assert "linear" not in {row["name"] for row in await response.json()}
    async with http.post("/v2/repository/models/linear/load") as response:
        assert response.status == 200
    status, answer = await _infer(http, "/v2/models/linear/infer", {"inputs": [_x_input()]})
    assert status == 200
    async with http.post("/v2/repository/models/nope/load") as response:
        assert response.status == 404
    async with http.post("/v2/repository/models/linear/rollback") as response:
        assert response.status == 400
        assert "roll back" in (await response.json())["error"]


def test_bytes_codec_round_trip() -> None:
    from orbiter.inference.tensors import decode_raw, encode_raw

    words = np.array(["ab", "", "héllo"], dtype=object)
    raw = encode_raw(words)
    assert raw[:4] == struct.pack("<I", 2)
    assert decode_raw("w", "BYTES", (3,), raw).tolist() == ["ab", "", "héllo"]


async def test_repository_index_options_are_checked_and_capped(
    http: aiohttp.ClientSession,
) -> None:
    async with http.post("/v2/repository/index", json={"ready": "false"}) as response:
        assert response.status == 400
        assert "'ready' must be true or false" in (await response.json())["error"]
    async with http.post("/v2/repository/index", data=b" " * (1 << 20)) as response:
        assert response.status == 400
        assert "limit" in (await response.json())["error"]
