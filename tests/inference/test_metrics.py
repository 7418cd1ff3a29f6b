"""Prometheus metrics on the metrics port, one registry per server."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
from orbiter.inference.protos import grpc_predict_v2_pb2 as pb
from orbiter.inference.protos import grpc_predict_v2_pb2_grpc as pb_grpc

from .conftest import make_server

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


async def _metrics(port: int | None) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def test_metrics_endpoint(repo: Path) -> None:
    async with make_server(repo) as server, make_server(repo) as other:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            for _ in range(3):
                async with http.post("/v2/models/linear/infer", json=BODY) as response:
                    assert response.status == 200
            async with http.post("/v2/models/linear/infer", json={"inputs": []}) as response:
                assert response.status == 400
            # A version nobody serves is no label of its own (or a peer makes series at will).
            url = "/v2/models/linear/versions/x7/infer"
            async with http.post(url, json=BODY) as response:
                assert response.status == 404
            async with http.get(f"http://127.0.0.1:{server.metrics_port}/elsewhere") as response:
                assert response.status == 404
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            request = pb.ModelInferRequest(model_name="linear")
            request.inputs.add(
                name="x", datatype="FP32", shape=[1, 4]
            ).contents.fp32_contents.extend([1, 2, 3, 4])
            await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        text = await _metrics(server.metrics_port)
        untouched = await _metrics(other.metrics_port)
    rest = 'model="linear",outcome="success",protocol="rest",version="1"'
    assert f"orbiter_inference_requests_total{{{rest}}} 3.0" in text
    grpc_ok = 'model="linear",outcome="success",protocol="grpc",version="1"'
    assert f"orbiter_inference_requests_total{{{grpc_ok}}} 1.0" in text
    failed = 'model="linear",outcome="failure",protocol="rest",version=""'
    assert f"orbiter_inference_requests_total{{{failed}}} 2.0" in text
    assert 'version="x7"' not in text
    latency = 'model="linear",protocol="rest",version="1"'
    assert f"orbiter_inference_request_duration_seconds_count{{{latency}}} 3.0" in text
    assert 'orbiter_inference_request_duration_seconds_bucket{le="0.005",model="linear"' in text
    assert 'orbiter_inference_batch_size_bucket{le="1.0",model="linear",version="1"}' in text
    assert 'orbiter_inference_batch_size_count{model="linear",version="1"} 4.0' in text
    assert 'orbiter_inference_queue_duration_seconds_count{model="linear",version="1"} 4.0' in text
    assert 'model="linear"' not in untouched  # its own registry
