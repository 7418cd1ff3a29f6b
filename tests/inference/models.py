"""Tiny ONNX models built with onnx.helper (no torch), written in Triton's repository layout,
and numpy's own computation of each, the reference the tests compare answers with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "LINEAR_B",
    "LINEAR_W",
    "fixed_model",
    "int64_model",
    "linear",
    "linear_model",
    "lookup_model",
    "pair_model",
    "ragged_model",
    "versioned",
    "versioned_model",
    "write_model",
]

LINEAR_W = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10).astype(np.float32)
LINEAR_B = np.array([1.0, 2.0, 3.0], dtype=np.float32)
_OPSET = [helper.make_opsetid("", 17)]


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=_OPSET, ir_version=8)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def linear_model() -> bytes:
    """y = x @ W + b: x [N, 4] FP32 -> y [N, 3], N symbolic."""
    return _model(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(LINEAR_W, "W"), numpy_helper.from_array(LINEAR_B, "b")],
    )


def linear(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) @ LINEAR_W + LINEAR_B).astype(np.float32)


def versioned_model(version: int) -> bytes:
    """y = x + 1000 * version: x [N, 2] FP32; answers tell versions (and rows) apart."""
    offset = np.array(1000.0 * version, dtype=np.float32)
    return _model(
        [helper.make_node("Add", ["x", "v"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(offset, "v")],
    )


def versioned(x: np.ndarray, version: int) -> np.ndarray:
    return (x.astype(np.float32) + np.float32(1000 * version)).astype(np.float32)


def int64_model() -> bytes:
    """y = x + 1: x [N, 2] INT64."""
    return _model(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 2])],
        [numpy_helper.from_array(np.array(1, dtype=np.int64), "one")],
    )


def pair_model() -> bytes:
    """sum = a + b, diff = a - b: a, b [N, 3] FP32; two inputs, two outputs."""
    return _model(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["diff"]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("sum", "diff")],
        [],
    )


def fixed_model() -> bytes:
    """y = 2x: x [2, 2] FP32, no batch dim (max_batch_size 0)."""
    return _model(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )


def ragged_model() -> bytes:
    """y = 2x: x [N, K] FP32, both symbolic: requests batch only with equal K."""
    return _model(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "K"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )


def write_model(
    repo: Path, name: str, version: int, model: bytes, config: str | None = None
) -> Path:
    """Writes ``repo/name/version/model.onnx`` (and ``config.pbtxt`` when given)."""
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return path


def lookup_model() -> bytes:
    """y = table[i]: i [N] INT64 indexes a table of 10 floats (i >= 10 fails in the run)."""
    return _model(
        [helper.make_node("Gather", ["table", "i"], ["y"], axis=0)],
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.arange(10, dtype=np.float32) * 10, "table")],
    )
