"""config.pbtxt: the text format parser, version policies, max_batch_size, a malformed config
(only that model unavailable, with the reason in the index) and programmatic versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from orbiter.inference import ConfigError, ModelConfig, VersionPolicy, parse_config
from orbiter.inference.config import TensorConfig

from .conftest import make_server
from .models import linear_model, versioned, versioned_model, write_model

TRITON_CONFIG = """
# A config written for Triton: the fields we do not use are ignored.
name: "linear"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] } ]
version_policy: { latest: { num_versions: 2 } }
dynamic_batching {
  max_queue_delay_microseconds: 100
  preferred_batch_size: [ 4, 8 ]
}
instance_group [ { count: 2, kind: KIND_CPU } ]
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
parameters { key: "x" value: { string_value: "it's \\"quoted\\"" } }
"""


def test_parse_triton_config() -> None:
    config = parse_config(TRITON_CONFIG)
    assert config == ModelConfig(
        name="linear",
        max_batch_size=8,
        inputs=(TensorConfig("x", "FP32", (4,)),),
        outputs=(TensorConfig("y", "FP32", (-1,)),),
        version_policy=VersionPolicy("latest", num_versions=2),
        max_queue_delay=0.0001,
        preferred_batch_sizes=(4, 8),
    )
    assert parse_config("") == ModelConfig()
    assert parse_config("version_policy: { all {} }").version_policy.select([3, 1, 2]) == [1, 2, 3]
    specific = parse_config("version_policy { specific { versions: [1, 3] } }").version_policy
    assert specific.select([1, 2, 3, 4]) == [1, 3]
    assert VersionPolicy().select([1, 5, 2]) == [5]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('max_batch_size: 8\ninput [ { name: "x" ', ["line 2", "'}'"]),
        ('name: "a"\nmax_batch_size 8', ["line 2", "':'"]),
        ('name: "a" @', ["line 1", "'@'"]),
        ('platform: "tensorflow_savedmodel"', ["tensorflow_savedmodel", "onnxruntime_onnx"]),
        ('max_batch_size: "eight"', ["max_batch_size", "integer"]),
        ('input [ { name: "x" data_type: TYPE_QUATERNION } ]', ["TYPE_QUATERNION"]),
        ("version_policy: { latest: { num_versions: 0 } }", ["num_versions"]),
    ],
)
def test_malformed_configs_say_what_is_wrong(text: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    for needle in needles:
        assert needle in str(raised.value)


async def _metadata(http: aiohttp.ClientSession, model: str) -> tuple[int, Any]:
    async with http.get(f"/v2/models/{model}") as response:
        return response.status, await response.json()


async def _infer(
    http: aiohttp.ClientSession, path: str, rows: int = 1, width: int = 2
) -> tuple[int, Any]:
    x = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    body = {
        "inputs": [
            {
                "name": "x",
                "shape": [rows, width],
                "datatype": "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ]
    }
    async with http.post(path, json=body) as response:
        return response.status, await response.json()


def _three_versions(root: Path, config: str) -> None:
    for version in (1, 2, 3):
        write_model(root, "versioned", version, versioned_model(version))
    (root / "versioned" / "config.pbtxt").write_text(config)


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"]),
        ("version_policy: { specific: { versions: [ 1, 3 ] } }", ["1", "3"]),
        ("version_policy: { all: {} }", ["1", "2", "3"]),
        ("", ["3"]),
    ],
)
async def test_version_policies(tmp_path: Path, policy: str, served: list[str]) -> None:
    _three_versions(tmp_path, policy)
    async with (
        make_server(tmp_path) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        status, meta = await _metadata(http, "versioned")
        assert status == 200 and meta["versions"] == served
        status, answer = await _infer(http, "/v2/models/versioned/infer")
        assert answer["model_version"] == served[-1]  # unversioned requests: the latest
        for version in ("1", "2", "3"):
            status, answer = await _infer(http, f"/v2/models/versioned/versions/{version}/infer")
            if version in served:
                assert status == 200 and answer["model_version"] == version
                x = np.arange(2, dtype=np.float32).reshape(1, 2)
                assert (
                    answer["outputs"][0]["data"] == versioned(x, int(version)).reshape(-1).tolist()
                )
            else:
                assert status == 404 and f"version '{version}'" in answer["error"]


async def test_max_batch_size_and_dims_from_config(tmp_path: Path) -> None:
    write_model(
        tmp_path,
        "linear",
        1,
        linear_model(),
        TRITON_CONFIG.replace("max_batch_size: 8", "max_batch_size: 2"),
    )
    write_model(
        tmp_path,
        "unbatched",
        1,
        linear_model(),
        'max_batch_size: 0\ninput [{ name: "x" dims: [-1, 4] }]',
    )
    async with (
        make_server(tmp_path) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        status, meta = await _metadata(http, "linear")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert (await _infer(http, "/v2/models/linear/infer", rows=2, width=4))[0] == 200
        status, answer = await _infer(http, "/v2/models/linear/infer", rows=3, width=4)
        assert status == 400 and "max_batch_size 2" in answer["error"]
        assert (await _infer(http, "/v2/models/unbatched/infer", rows=100, width=4))[0] == 200
    assert all(len(b.request_ids) == 1 for b in server.service.batches("unbatched"))


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        ("max_batch_size: [", ["config.pbtxt", "line 1"]),
        ('name: "other"', ["config.pbtxt", "'other'"]),
        ('backend: "pytorch"', ["config.pbtxt", "pytorch"]),
        ('input [{ name: "z" }]', ["'z'", "not in the model"]),
        ('input [{ name: "x" data_type: TYPE_INT32 }]', ["'x'", "INT32", "FP32"]),
    ],
)
async def test_bad_config_makes_only_that_model_unavailable(
    tmp_path: Path, config: str, needles: list[str]
) -> None:
    write_model(tmp_path, "broken", 1, linear_model(), config)
    write_model(tmp_path, "linear", 1, linear_model())
    async with (
        make_server(tmp_path) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        async with http.post("/v2/repository/index") as response:
            rows = {r["name"]: r for r in await response.json()}
        assert rows["linear"]["state"] == "READY"
        assert rows["broken"]["state"] == "UNAVAILABLE"
        for needle in needles:
            assert needle in rows["broken"]["reason"], rows["broken"]
        status, answer = await _infer(http, "/v2/models/broken/infer", width=4)
        assert status == 503 and "not ready" in answer["error"]
        assert (await _infer(http, "/v2/models/linear/infer", width=4))[0] == 200
        async with http.get("/v2/models/broken/ready") as response:
            assert response.status == 400
        async with http.get("/v2/health/ready") as response:
            assert response.status == 200


async def test_programmatic_versions(tmp_path: Path) -> None:
    stored = tmp_path / "registry"
    one = write_model(stored, "fetched", 1, versioned_model(1))
    two = write_model(stored, "fetched", 2, versioned_model(2))
    server = make_server(None, grpc_port=None, metrics_port=None)
    server.repository.add_version("alias", 1, one)
    async with server, aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
        assert server.ports.grpc is None and server.ports.metrics is None
        assert (await _infer(http, "/v2/models/alias/infer"))[1]["model_version"] == "1"
        server.repository.add_version("alias", 2, two)
        await server.service.load("alias")
        assert (await _infer(http, "/v2/models/alias/infer"))[1]["model_version"] == "2"
        await server.service.rollback("alias")
        assert (await _infer(http, "/v2/models/alias/infer"))[1]["model_version"] == "1"
    with pytest.raises(ValueError, match="positive"):
        server.repository.add_version("alias", 0, one)
