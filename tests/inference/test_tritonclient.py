"""A client no one here wrote: NVIDIA's tritonclient, over HTTP (binary and JSON tensors)
and gRPC, gets the predictions numpy computes. The sync clients block, so they run in a
worker thread while the server runs in the test's loop."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from orbiter.inference import InferenceServer

from .models import linear

X = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
A = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.full((2, 3), 0.25, dtype=np.float32)


def _http_session(url: str, binary: bool) -> dict[str, Any]:
    client = httpclient.InferenceServerClient(url)
    try:
        metadata = client.get_model_metadata("linear")
        x = httpclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("y", binary_data=binary)]
        y = client.infer("linear", [x], outputs=outputs, request_id="t-1")
        a = httpclient.InferInput("a", [2, 3], "FP32")
        a.set_data_from_numpy(A, binary_data=binary)
        b = httpclient.InferInput("b", [2, 3], "FP32")
        b.set_data_from_numpy(B, binary_data=binary)
        pair = client.infer("pair", [a, b])  # no outputs named: all come back binary
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready("linear"),
            "missing_ready": client.is_model_ready("nope"),
            "metadata": metadata,
            "y": y.as_numpy("y"),
            "id": y.get_response()["id"],
            "sum": pair.as_numpy("sum"),
            "diff": pair.as_numpy("diff"),
        }
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_tritonclient_http(server: InferenceServer, binary: bool) -> None:
    got = await asyncio.to_thread(_http_session, f"127.0.0.1:{server.http_port}", binary)
    assert got["live"] and got["ready"] and got["model_ready"] and not got["missing_ready"]
    assert got["metadata"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert got["id"] == "t-1"
    np.testing.assert_allclose(got["y"], linear(X), rtol=1e-5)
    np.testing.assert_array_equal(got["sum"], A + B)
    np.testing.assert_array_equal(got["diff"], A - B)


async def test_tritonclient_http_aio(server: InferenceServer) -> None:
    client = aiohttpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        assert await client.is_model_ready("linear")
        x = aiohttpclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        result = await client.infer("linear", [x])
        np.testing.assert_allclose(result.as_numpy("y"), linear(X), rtol=1e-5)
    finally:
        await client.close()


def _grpc_session(url: str) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(url)
    try:
        x = grpcclient.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        y = client.infer("linear", [x], outputs=[grpcclient.InferRequestedOutput("y")])
        a = grpcclient.InferInput("a", [2, 3], "FP32")
        a.set_data_from_numpy(A)
        b = grpcclient.InferInput("b", [2, 3], "FP32")
        b.set_data_from_numpy(B)
        pair = client.infer("pair", [a, b], model_version="1")
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready("linear"),
            "metadata": client.get_model_metadata("linear", as_json=True),
            "server": client.get_server_metadata(as_json=True),
            "index": client.get_model_repository_index(as_json=True),
            "y": y.as_numpy("y"),
            "sum": pair.as_numpy("sum"),
            "diff": pair.as_numpy("diff"),
        }
    finally:
        client.close()


async def test_tritonclient_grpc(server: InferenceServer) -> None:
    got = await asyncio.to_thread(_grpc_session, f"127.0.0.1:{server.grpc_port}")
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["metadata"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert got["server"]["name"] == "orbiter"
    assert {"name": "linear", "version": "1", "state": "READY"} in got["index"]["models"]
    np.testing.assert_allclose(got["y"], linear(X), rtol=1e-5)
    np.testing.assert_array_equal(got["sum"], A + B)
    np.testing.assert_array_equal(got["diff"], A - B)
