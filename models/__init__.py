"""Models: a torch model zoo for the built-in data, seeded training, ONNX export checked against
torch (and int8 quantization), an MLflow registry with lineage and aliases, and a
content-addressed artifact store (a local directory or S3)::

    from orbiter.models import Registry, export_onnx, train_digits

    model, history, split = train_digits("digits-cloud", seed=0)
    export_onnx(model, "digits.onnx", split.x_test[:2], check_data=split.x_test)
    Registry(data_dir="data").register("digits", "digits.onnx", dataset="digits@seed0",
                                       aliases=["production"])

Names load on first use: the registry and artifact store work without torch (an edge gateway
fetching its model installs neither torch nor scikit-learn)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .artifacts import (
        ArtifactError,
        ArtifactRef,
        ArtifactStore,
        ChecksumMismatch,
        LocalArtifactStore,
        open_store,
    )
    from .datasets import (
        ArrayDataset,
        DatasetError,
        Split,
        load_csv,
        load_digits_split,
        load_image_folder,
        load_index,
        load_npz,
    )
    from .exporting import (
        OPSET,
        ExportError,
        ExportReport,
        QuantizeReport,
        export_onnx,
        onnx_predict,
        quantize_int8,
    )
    from .registry import (
        Lineage,
        ModelNotFound,
        ModelVersionInfo,
        RegisteredModelInfo,
        Registry,
        RegistryError,
    )
    from .s3storage import S3ArtifactStore
    from .training import History, evaluate, predict, train, train_digits
    from .zoo import MODEL_NAMES, build_model, count_flops

_HOMES = {
    "artifacts": (
        "ArtifactError",
        "ArtifactRef",
        "ArtifactStore",
        "ChecksumMismatch",
        "LocalArtifactStore",
        "open_store",
    ),
    "s3storage": ("S3ArtifactStore",),
    "datasets": (
        "ArrayDataset",
        "DatasetError",
        "Split",
        "load_csv",
        "load_digits_split",
        "load_image_folder",
        "load_index",
        "load_npz",
    ),
    "exporting": (
        "OPSET",
        "ExportError",
        "ExportReport",
        "QuantizeReport",
        "export_onnx",
        "onnx_predict",
        "quantize_int8",
    ),
    "registry": (
        "Lineage",
        "ModelNotFound",
        "ModelVersionInfo",
        "RegisteredModelInfo",
        "Registry",
        "RegistryError",
    ),
    "training": ("History", "evaluate", "predict", "train", "train_digits"),
    "zoo": ("MODEL_NAMES", "build_model", "count_flops"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "MODEL_NAMES",
    "OPSET",
    "ArrayDataset",
    "ArtifactError",
    "ArtifactRef",
    "ArtifactStore",
    "ChecksumMismatch",
    "DatasetError",
    "ExportError",
    "ExportReport",
    "History",
    "Lineage",
    "LocalArtifactStore",
    "ModelNotFound",
    "ModelVersionInfo",
    "QuantizeReport",
    "RegisteredModelInfo",
    "Registry",
    "RegistryError",
    "S3ArtifactStore",
    "Split",
    "build_model",
    "count_flops",
    "evaluate",
    "export_onnx",
    "load_csv",
    "load_digits_split",
    "load_image_folder",
    "load_index",
    "load_npz",
    "onnx_predict",
    "open_store",
    "predict",
    "quantize_int8",
    "train",
    "train_digits",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
