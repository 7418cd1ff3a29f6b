"""ONNX export (one file, dynamic batch, checked against torch) and int8 quantization."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx.external_data_helper import uses_external_data
from orbiter.models.datasets import Split
from orbiter.models.exporting import (
    OPSET,
    ExportError,
    export_onnx,
    onnx_predict,
    quantize_int8,
)
from orbiter.models.training import predict, train_digits
from orbiter.models.zoo import DigitsCloudNet, DigitsEdgeNet, build_model
from torch import nn

# Accuracy is not the point here: a few epochs of the real architectures are enough.
EPOCHS = {"digits-edge": 20, "digits-cloud": 8}
Trained = dict[str, tuple[nn.Module, Split]]


@pytest.fixture(scope="module")
def trained() -> Trained:
    out: Trained = {}
    for name, epochs in EPOCHS.items():
        model, _, split = train_digits(name, seed=0, epochs=epochs)
        out[name] = (model, split)
    return out


class _ExportTimeOffset(nn.Module):
    """A model whose exported graph differs from eager torch, as a mis-export would."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc(x.flatten(1))
        return y + 1e-3 if torch.compiler.is_exporting() else y


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits-edge", "digits-cloud"])
def test_digits_export(trained: Trained, name: str, tmp_path: Path) -> None:
    model, split = trained[name]
    assert isinstance(model, DigitsEdgeNet if name == "digits-edge" else DigitsCloudNet)
    path = tmp_path / f"{name}.onnx"
    # A batch-1 example: the exported batch dimension must still be dynamic.
    report = export_onnx(model, path, split.x_test[:1], check_data=split.x_test)

    assert report.max_abs_diff <= 1e-4  # on the whole held-out split
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no .data side file
    assert report.path == path and report.size_bytes == path.stat().st_size
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (report.opset, report.input_name, report.output_name) == (OPSET, "input", "logits")
    assert report.input_shape == ("batch", 1, 8, 8) and report.seconds > 0

    proto = onnx.load(str(path), load_external_data=False)
    assert not any(uses_external_data(t) for t in proto.graph.initializer)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    out_shape = proto.graph.output[0].type.tensor_type.shape
    assert [d.dim_param or d.dim_value for d in out_shape.dim] == ["batch", 10]

    for n in (1, 37):
        got = onnx_predict(path, split.x_test[:n])
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, predict(model, split.x_test[:n]), rtol=0, atol=1e-4)
    assert not model.training


def test_mismatch_raises_and_leaves_no_file(tmp_path: Path) -> None:
    model = _ExportTimeOffset()
    x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"max abs diff 0\.001 > atol 0\.0001"):
        export_onnx(model, path, x)
    assert list(tmp_path.iterdir()) == []
    # The same check passes once the tolerance admits the real difference.
    report = export_onnx(model, path, x, atol=2e-3, input_name="pixels", output_name="scores")
    assert report.max_abs_diff == pytest.approx(1e-3, abs=1e-6)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["pixels"]
    assert [o.name for o in graph.output] == ["scores"]
    assert model.training  # the export restored the caller's mode


@pytest.mark.slow
def test_resnet18_export(tmp_path: Path) -> None:
    model = build_model("resnet18", seed=0)
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    report = export_onnx(model, tmp_path / "resnet18.onnx", x)
    assert report.max_abs_diff <= 1e-4
    assert report.input_shape == ("batch", 3, 224, 224)
    assert report.size_bytes > 11_689_512 * 4  # every weight embedded
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18.onnx"]
    assert onnx_predict(report.path, x[:1]).shape == (1, 1000)


@pytest.mark.slow
def test_int8_static_quantization(trained: Trained, tmp_path: Path) -> None:
    model, split = trained["digits-cloud"]
    fp32 = export_onnx(model, tmp_path / "cloud.onnx", split.x_test[:4]).path
    report = quantize_int8(
        fp32,
        tmp_path / "cloud.int8.onnx",
        calibration=split.x_train[:512],
        eval_data=(split.x_test, split.y_test),
    )
    assert report.mode == "static"
    assert report.accuracy_fp32 is not None and report.accuracy_int8 is not None
    assert report.accuracy_change is not None
    assert report.accuracy_fp32 >= 0.95
    assert report.accuracy_change == pytest.approx(report.accuracy_int8 - report.accuracy_fp32)
    assert abs(report.accuracy_change) <= 0.03
    assert report.size_bytes_int8 < report.size_bytes_fp32 / 2
    assert report.sha256 == hashlib.sha256(report.path.read_bytes()).hexdigest()
    ops = {node.op_type for node in onnx.load(str(report.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloud.int8.onnx", "cloud.onnx"]


@pytest.mark.slow
def test_int8_dynamic_quantization(trained: Trained, tmp_path: Path) -> None:
    model, split = trained["digits-edge"]
    fp32 = export_onnx(model, tmp_path / "edge.onnx", split.x_test[:4]).path
    report = quantize_int8(fp32, tmp_path / "edge.int8.onnx")
    assert report.mode == "dynamic"
    assert report.accuracy_fp32 is None and report.accuracy_change is None
    logits = onnx_predict(report.path, split.x_test)
    assert logits.shape == (len(split.x_test), 10)
    agree = (logits.argmax(1) == onnx_predict(fp32, split.x_test).argmax(1)).mean()
    assert agree >= 0.95
