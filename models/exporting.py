"""ONNX export checked against torch, and int8 quantization with its accuracy cost.

Exported files are self-contained (weights embedded, no ``.onnx.data`` side file) and have
a dynamic batch dimension named ``batch``. Files are written next to their destination
under a temporary name and renamed into place only once they pass their checks, so a
failed export never leaves a half-checked model behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.external_data_helper import uses_external_data
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from tqdm import tqdm

from .training import predict

__all__ = [
    "OPSET",
    "ExportError",
    "ExportReport",
    "QuantizeReport",
    "export_onnx",
    "onnx_predict",
    "quantize_int8",
    "sha256_file",
]

# Pinned, not torch's default: a torch upgrade must not silently change the operator set
# (and the bytes) of the files we ship; opset 18 runs on every onnxruntime we support.
OPSET = 18
_BATCH = "batch"


class ExportError(RuntimeError):
    """An exported or quantized model failed its check."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    sha256: str
    size_bytes: int
    opset: int
    max_abs_diff: float  # between onnxruntime and torch on the check data
    input_name: str
    output_name: str
    input_shape: tuple[int | str, ...]  # e.g. ("batch", 1, 8, 8)
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the path as a string, the shape as a list)."""
        return asdict(self) | {"path": str(self.path), "input_shape": list(self.input_shape)}


@dataclass(frozen=True)
class QuantizeReport:
    path: Path
    source: Path
    mode: Literal["static", "dynamic"]
    sha256: str
    size_bytes_fp32: int
    size_bytes_int8: int
    # Fractions in [0, 1]; accuracy_change = accuracy_int8 - accuracy_fp32 (also a fraction,
    # so -0.01 is one percentage point lost). None without eval data.
    accuracy_fp32: float | None
    accuracy_int8: float | None
    accuracy_change: float | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (paths as strings)."""
        return asdict(self) | {"path": str(self.path), "source": str(self.source)}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known, harmless chatter (the suite turns warnings into errors)."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    # torch.fx's interpreter creates a (disabled) tqdm bar, which would start tqdm's monitor
    # thread for the rest of the process.
    interval = tqdm.monitor_interval
    tqdm.monitor_interval = 0
    try:
        with warnings.catch_warnings():
            # torch.export's pytree still builds LeafSpec objects (torch 2.13).
            warnings.filterwarnings("ignore", r".*LeafSpec", FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"onnxscript")
            yield
    finally:
        tqdm.monitor_interval = interval
        onnx_logger.setLevel(level)


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed to it on success, removed on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no optimizer notes on stderr
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: np.ndarray, batch_size: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs = [
        session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs)


def onnx_predict(path: str | Path, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Outputs of the ONNX model at ``path`` for ``x`` (one CPU session, in batches)."""
    return _run(_session(Path(path)), x, batch_size)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    diff[np.isnan(a) & np.isnan(b)] = 0.0
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)


def _check_file(path: Path, input_name: str, output_name: str) -> tuple[int | str, ...]:
    """Validate the exported file's structure; returns its input shape."""
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto)
    if any(uses_external_data(t) for t in proto.graph.initializer):
        raise ExportError(f"{path}: weights were written to external data, not embedded")
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [input_name] or outputs != [output_name]:
        raise ExportError(f"exported graph has inputs {inputs} and outputs {outputs}")
    shape = _dims(proto.graph.input[0])
    if not shape or shape[0] != _BATCH:
        raise ExportError(f"exported input shape {list(shape)} has no dynamic batch dimension")
    return shape


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example: np.ndarray | torch.Tensor,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    check_data: np.ndarray | torch.Tensor | None = None,
    atol: float = 1e-4,
) -> ExportReport:
    """Export ``model`` (in eval mode) to one ONNX file at ``path`` and check it.

    ``example`` is a batch of inputs (any batch size: the batch dimension is exported as
    dynamic). The file is then run with onnxruntime on ``check_data`` (held-out inputs;
    default: ``example``) and compared with torch; :class:`ExportError` if the largest
    absolute difference exceeds ``atol``.
    """
    started = time.perf_counter()
    path = Path(path)
    example_t = torch.as_tensor(np.asarray(example, dtype=np.float32))
    check = np.asarray(example_t if check_data is None else check_data, dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with _staged(path) as tmp, _quiet_exporter():
            torch.onnx.export(
                model,
                (example_t,),
                str(tmp),
                dynamo=True,
                external_data=False,  # one file: a model is one artifact to hash and ship
                opset_version=OPSET,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: torch.export.Dim(_BATCH, min=1)},),
                verbose=False,
                report=False,
            )
            input_shape = _check_file(tmp, input_name, output_name)
            diff = _max_abs_diff(_run(_session(tmp), check, 1024), predict(model, check))
            if diff > atol:
                raise ExportError(
                    f"onnxruntime and torch disagree on {len(check)} samples: "
                    f"max abs diff {diff:.3g} > atol {atol:.3g}"
                )
    finally:
        model.train(was_training)
    return ExportReport(
        path=path,
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        opset=OPSET,
        max_abs_diff=diff,
        input_name=input_name,
        output_name=output_name,
        input_shape=input_shape,
        seconds=time.perf_counter() - started,
    )


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    """Calibration inputs for onnxruntime, in batches."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int = 64) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._batches = iter([x[i : i + batch_size] for i in range(0, len(x), batch_size)])
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float((onnx_predict(path, x).argmax(1) == np.asarray(y)).mean())


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    *,
    calibration: np.ndarray | None = None,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
) -> QuantizeReport:
    """Quantize the ONNX model ``src`` to int8 at ``dst``.

    With ``calibration`` inputs (a few hundred training samples are plenty): static QDQ
    quantization, weights per channel, activation ranges from the calibration data (MinMax).
    Without: dynamic quantization (weights only; activations are quantized at run time).
    With ``eval_data`` = (x, y), both models' accuracies are measured on it.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    graph = onnx.load(str(src), load_external_data=False).graph
    if len(graph.input) != 1:
        raise ValueError(f"{src}: expected one input, found {[i.name for i in graph.input]}")
    with tempfile.TemporaryDirectory() as work, _staged(dst) as tmp:
        # ORT's recommended pre-processing (shape inference, graph optimisation): it helps
        # the quantizer, and without it ORT logs a warning on the root logger.
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        mode: Literal["static", "dynamic"]
        if calibration is not None:
            mode = "static"
            reader = _Calibration(graph.input[0].name, calibration)
            quantize_static(
                str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=True
            )
        else:
            mode = "dynamic"
            quantize_dynamic(str(prepared), str(tmp))
        acc_fp32 = acc_int8 = change = None
        if eval_data is not None:
            x, y = eval_data
            acc_fp32, acc_int8 = _accuracy(src, x, y), _accuracy(tmp, x, y)
            change = acc_int8 - acc_fp32
    return QuantizeReport(
        path=dst,
        source=src,
        mode=mode,
        sha256=sha256_file(dst),
        size_bytes_fp32=src.stat().st_size,
        size_bytes_int8=dst.stat().st_size,
        accuracy_fp32=acc_fp32,
        accuracy_int8=acc_int8,
        accuracy_change=change,
        seconds=time.perf_counter() - started,
    )
