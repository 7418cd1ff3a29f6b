"""The Open Inference Protocol over gRPC with our own stubs: typed contents and raw contents,
the repository RPCs, and status codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from orbiter.inference.protos import grpc_predict_v2_pb2 as pb

from .conftest import CAP
from .models import linear, linear_model, write_model

X = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32)


def _request(model: str = "linear", x: np.ndarray = X, *, raw: bool = True, **fields: Any) -> Any:
    request = pb.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    if raw:
        request.raw_input_contents.append(x.tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    return request


def _output(response: Any, index: int = 0, dtype: Any = np.float32) -> np.ndarray:
    tensor = response.outputs[index]
    return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(tensor.shape)


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


async def test_health_and_metadata(stub: Any) -> None:
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "orbiter" and "binary_tensor_data" in meta.extensions
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="linear"))).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="linear", version="1"))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="linear", version="2"))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="nope"))).ready
    model = await stub.ModelMetadata(pb.ModelMetadataRequest(name="linear"))
    assert model.name == "linear" and list(model.versions) == ["1"]
    assert model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("y", "FP32", [-1, 3])]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "contents"])
async def test_infer(stub: Any, raw: bool) -> None:
    response = await stub.ModelInfer(_request(raw=raw, id="g-1"))
    assert response.model_name == "linear" and response.model_version == "1"
    assert response.id == "g-1"
    assert response.outputs[0].name == "y" and response.outputs[0].datatype == "FP32"
    assert list(response.outputs[0].shape) == [2, 3]
    np.testing.assert_allclose(_output(response), linear(X), rtol=1e-6)


async def test_infer_int64_contents_and_outputs_subset(stub: Any) -> None:
    request = pb.ModelInferRequest(model_name="int64", model_version="1")
    request.inputs.add(name="x", datatype="INT64", shape=[1, 2]).contents.int64_contents.extend(
        [5, -7]
    )
    response = await stub.ModelInfer(request)
    assert _output(response, dtype=np.int64).tolist() == [[6, -6]]
    request = pb.ModelInferRequest(model_name="pair")
    for name in ("a", "b"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend(
            [1, 2, 3]
        )
    request.outputs.add(name="sum")
    response = await stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["sum"]
    assert _output(response).tolist() == [[2, 4, 6]]


async def test_bad_requests_are_invalid_argument(stub: Any) -> None:
    cases: list[tuple[Any, list[str]]] = []
    wrong_name = _request()
    wrong_name.inputs[0].name = "z"
    cases.append((wrong_name, ["'z'", "'x'"]))
    cases.append((_request(x=np.zeros((2, 5), np.float32)), ["'x'", "[-1, 4]", "[2, 5]"]))
    wrong_type = pb.ModelInferRequest(model_name="linear")
    wrong_type.inputs.add(name="x", datatype="INT64", shape=[1, 4]).contents.int64_contents.extend(
        [1, 2, 3, 4]
    )
    cases.append((wrong_type, ["'x'", "FP32", "INT64"]))
    short = _request(raw=False)
    del short.inputs[0].contents.fp32_contents[-1]
    cases.append((short, ["'x'", "8 elements", "7"]))
    short_raw = _request()
    short_raw.raw_input_contents[0] = short_raw.raw_input_contents[0][:-4]
    cases.append((short_raw, ["'x'", "32 bytes", "28"]))
    extra_raw = _request()
    extra_raw.raw_input_contents.append(b"1234")
    cases.append((extra_raw, ["raw_input_contents has 2 entries for 1 inputs"]))
    cases.append((pb.ModelInferRequest(model_name="linear"), ["no inputs"]))
    for request, needles in cases:
        code, details = await _status(stub.ModelInfer(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        for needle in needles:
            assert needle in details, (needle, details)
    assert (await stub.ModelInfer(_request())).outputs  # still answering


async def test_not_found_unavailable_and_cap(stub: Any) -> None:
    code, details = await _status(stub.ModelInfer(_request("nope")))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details
    code, details = await _status(stub.ModelInfer(_request(model_version="9")))
    assert code == grpc.StatusCode.NOT_FOUND and "'9'" in details
    code, _ = await _status(stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    big = _request(x=np.zeros((CAP // 16 + 1, 4), np.float32))
    code, details = await _status(stub.ModelInfer(big))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_request_bytes" in details
    huge = _request(x=np.zeros((CAP // 8 + 1, 4), np.float32))
    code, _ = await _status(stub.ModelInfer(huge))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpc's transport: never allocated
    await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="linear"))
    code, details = await _status(stub.ModelInfer(_request()))
    assert code == grpc.StatusCode.UNAVAILABLE and "unloaded" in details
    index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
    rows = {(m.name, m.version): m.state for m in index.models}
    assert rows[("linear", "")] == "UNAVAILABLE" and rows[("pair", "1")] == "READY"
    ready = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert "linear" not in {m.name for m in ready.models}
    await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="linear"))
    assert (await stub.ModelInfer(_request())).model_version == "1"
    code, _ = await _status(
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_a_model_name_cannot_reach_outside_the_repository(
    stub: Any, repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write_model(outside, "evil", 1, linear_model())
    for name in (str(outside / "evil"), "../outside/evil", "..", ""):
        request = pb.RepositoryModelLoadRequest(model_name=name)
        code, _ = await _status(stub.RepositoryModelLoad(request))
        assert code == grpc.StatusCode.NOT_FOUND, name
