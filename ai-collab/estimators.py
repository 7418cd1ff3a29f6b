"""The estimator contract a worker's model follows, and two estimators that follow it.

Like Sedna, the SDK duck-types the estimator: a class or an instance with ``predict`` (joint
inference), ``train``/``evaluate`` (incremental and lifelong learning), ``load``/``save``,
and ``get_weights``/``set_weights`` (federated learning). :class:`Estimator` spells the whole
contract as a ``typing.Protocol``; :func:`instantiate` creates a class with only the keyword
arguments its constructor accepts, and :func:`call_accepting` does the same for a method.

- :class:`OnnxEstimator`: inference with onnxruntime on an exported ONNX file (what an edge
  worker runs; imports onnxruntime on first load, never torch);
- :class:`TorchEstimator`: an ``nn.Module`` trained with ``orbiter.models``' seeded loop
  (torch is imported on first use).

:func:`softmax` is registered as the ``softmax`` post-process callback.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .registry import ClassType, registry

if TYPE_CHECKING:
    import onnxruntime as ort
    from torch import nn

__all__ = [
    "Estimator",
    "OnnxEstimator",
    "Predictor",
    "TorchEstimator",
    "call_accepting",
    "instantiate",
    "softmax",
]


@runtime_checkable
class Predictor(Protocol):
    """The part of the contract joint inference needs."""

    def predict(self, data: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class Estimator(Protocol):
    """The whole estimator contract (Sedna's, reference ``sedna.md`` §3.1)."""

    def train(self, train_data: Any, valid_data: Any = None, **kwargs: Any) -> Any:
        """Trains; returns metrics or a history."""

    def evaluate(self, data: Any, **kwargs: Any) -> Mapping[str, Any]:
        """Metrics on ``data`` (for an incremental-learning deploy gate, list-valued)."""

    def predict(self, data: Any, **kwargs: Any) -> Any: ...

    def predict_proba(self, data: Any, **kwargs: Any) -> Any: ...

    def load(self, model_url: str) -> Any: ...

    def save(self, model_path: str) -> Any: ...

    def get_weights(self) -> list[np.ndarray]: ...

    def set_weights(self, weights: Sequence[Any]) -> None: ...


def _accepted(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass everything
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(kwargs)
    names = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in kwargs.items() if k in names}


def call_accepting(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the keyword arguments ``fn`` does not take left out
    (all passed when it takes ``**kwargs``), as Sedna calls a user's ``predict``."""
    return fn(*args, **_accepted(fn, kwargs))


def instantiate(estimator: Any, **kwargs: Any) -> Any:
    """An instance of ``estimator``: a class is created with the ``kwargs`` its constructor
    accepts, anything else is returned as it is."""
    if isinstance(estimator, type):
        return estimator(**_accepted(estimator, kwargs))
    return estimator


@registry.register(ClassType.CALLBACK)
def softmax(logits: Any) -> np.ndarray:
    """Probabilities along the last axis (float32), computed stably."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def _features(data: Any) -> Any:
    """The samples of ``data``: an array, or a dataset with ``.x``, or an (x, y) pair."""
    if hasattr(data, "x"):
        return data.x
    if isinstance(data, tuple) and len(data) == 2:
        return data[0]
    return data


def _labelled(data: Any) -> tuple[Any, np.ndarray]:
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, np.asarray(data.y)
    if isinstance(data, tuple) and len(data) == 2:
        return data[0], np.asarray(data[1])
    raise TypeError(f"expected a dataset with x and y or an (x, y) pair, got {type(data)}")


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxEstimator:
    """Inference on an ONNX file with onnxruntime (CPU).

    ``predict`` returns the model's output (``output_name``, default the first: logits for
    the digits models); ``predict_proba`` its softmax. ``intra_op_threads`` defaults to 1:
    an edge worker answers one small request at a time on a shared CPU, where more threads
    cost more in hand-offs than they save. ONNX files are inference-only here: ``train``
    and the weight accessors raise ``NotImplementedError``.
    """

    def __init__(
        self,
        model_url: str | os.PathLike[str] | None = None,
        *,
        input_name: str | None = None,
        output_name: str | None = None,
        intra_op_threads: int | None = 1,
        batch_size: int = 1024,
    ) -> None:
        self.model_url = None if model_url is None else str(model_url)
        self.input_name = input_name
        self.output_name = output_name
        self.intra_op_threads = intra_op_threads
        self.batch_size = batch_size
        self._session: ort.InferenceSession | None = None
        self._dtype: Any = np.float32

    def load(self, model_url: str | os.PathLike[str] | None = None) -> None:
        """Opens the model at ``model_url`` (default: the constructor's)."""
        import onnxruntime as ort

        url = self.model_url if model_url is None else str(model_url)
        if url is None:
            raise ValueError("no model to load: pass model_url (or set MODEL_URL)")
        if not Path(url).is_file():
            raise FileNotFoundError(f"model file {url} does not exist")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        session = ort.InferenceSession(url, options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in session.get_inputs()}
        name = self.input_name or session.get_inputs()[0].name
        if name not in inputs:
            raise ValueError(f"{url}: no input {name!r} (inputs: {', '.join(inputs)})")
        outputs = [o.name for o in session.get_outputs()]
        if self.output_name is not None and self.output_name not in outputs:
            raise ValueError(f"{url}: no output {self.output_name!r} (outputs: {outputs})")
        self.input_name, self.model_url = name, url
        self._dtype = _ORT_TYPES.get(inputs[name].type, np.float32)
        self._session = session

    def _ready(self) -> ort.InferenceSession:
        if self._session is None:
            self.load()
        assert self._session is not None
        return self._session

    @property
    def session(self) -> ort.InferenceSession:
        """The onnxruntime session (loaded now if need be): its ``get_inputs()`` and
        ``get_outputs()`` describe the model, e.g. for a server's metadata."""
        return self._ready()

    def predict(self, data: Any, **kwargs: Any) -> np.ndarray:
        session = self._ready()
        x = np.ascontiguousarray(_features(data), dtype=self._dtype)
        fetch = None if self.output_name is None else [self.output_name]
        outs = [
            session.run(fetch, {self.input_name: x[i : i + self.batch_size]})[0]
            for i in range(0, max(len(x), 1), self.batch_size)
        ]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def predict_proba(self, data: Any, **kwargs: Any) -> np.ndarray:
        return softmax(self.predict(data))

    def evaluate(self, data: Any, **kwargs: Any) -> dict[str, float]:
        """``accuracy`` (a fraction) of the arg-max prediction on labelled ``data``."""
        x, y = _labelled(data)
        return {"accuracy": float((self.predict(x).argmax(-1) == y).mean())}

    def save(self, model_path: str | os.PathLike[str]) -> str:
        """Copies the loaded model file to ``model_path``; returns the path."""
        if self.model_url is None:
            raise ValueError("no model loaded")
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model_url, model_path)
        return str(model_path)

    def train(self, train_data: Any, valid_data: Any = None, **kwargs: Any) -> Any:
        raise NotImplementedError("ONNX models are inference-only: train a TorchEstimator")

    def get_weights(self) -> list[np.ndarray]:
        raise NotImplementedError("ONNX models are inference-only: use a TorchEstimator")

    def set_weights(self, weights: Sequence[Any]) -> None:
        raise NotImplementedError("ONNX models are inference-only: use a TorchEstimator")


class TorchEstimator:
    """An ``nn.Module`` (or a zero-argument factory of one, or a zoo name such as
    ``"digits-edge"``) behind the estimator contract; trained with ``orbiter.models.train``
    (Adam, cross-entropy, seeded). ``predict`` returns logits as a float32 array."""

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module] | str,
        *,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        self._model_spec = model
        self._model: nn.Module | None = None
        self.epochs, self.batch_size, self.lr, self.seed = epochs, batch_size, lr, seed

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            from torch import nn

            spec = self._model_spec
            if isinstance(spec, str):
                from orbiter.models.zoo import build_model

                self._model = build_model(spec, seed=self.seed)
            elif isinstance(spec, nn.Module):
                self._model = spec
            else:
                self._model = spec()
        return self._model

    def train(self, train_data: Any, valid_data: Any = None, **kwargs: Any) -> dict[str, float]:
        """Trains in place; ``epochs``, ``batch_size``, ``lr``, ``seed`` may be overridden
        per call. Returns the last epoch's metrics."""
        from orbiter.models.training import train

        history = train(
            self.model,
            _labelled(train_data),
            epochs=int(kwargs.get("epochs", self.epochs)),
            batch_size=int(kwargs.get("batch_size", self.batch_size)),
            lr=float(kwargs.get("lr", self.lr)),
            seed=int(kwargs.get("seed", self.seed)),
            val_data=None if valid_data is None else _labelled(valid_data),
            progress=False,
        )
        return history.last

    def evaluate(self, data: Any, **kwargs: Any) -> dict[str, float]:
        from orbiter.models.training import evaluate

        return evaluate(self.model, _labelled(data))

    def predict(self, data: Any, **kwargs: Any) -> np.ndarray:
        from orbiter.models.training import predict

        return predict(self.model, np.asarray(_features(data), dtype=np.float32))

    def predict_proba(self, data: Any, **kwargs: Any) -> np.ndarray:
        return softmax(self.predict(data))

    def save(self, model_path: str | os.PathLike[str]) -> str:
        """The state dict, written with ``torch.save``."""
        import torch

        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), model_path)
        return str(model_path)

    def load(self, model_url: str | os.PathLike[str]) -> None:
        """A state dict written by :meth:`save` (loaded with ``weights_only``: no pickled
        code runs)."""
        import torch

        self.model.load_state_dict(torch.load(model_url, weights_only=True))

    def get_weights(self) -> list[np.ndarray]:
        """The state dict's tensors, in order, as numpy arrays (copies)."""
        return [t.detach().cpu().numpy().copy() for t in self.model.state_dict().values()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        import torch

        state = self.model.state_dict()
        if len(weights) != len(state):
            raise ValueError(f"expected {len(state)} arrays, got {len(weights)}")
        new = {}
        for (key, old), value in zip(state.items(), weights, strict=True):
            tensor = torch.as_tensor(np.asarray(value), dtype=old.dtype)
            if tensor.shape != old.shape:
                raise ValueError(f"{key}: expected shape {tuple(old.shape)}, got {tensor.shape}")
            new[key] = tensor
        self.model.load_state_dict(new)
