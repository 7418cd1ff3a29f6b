"""Sedna-compatible collaborative AI: the worker SDK (estimator contract, algorithm
registry, hard-example mining, joint inference, status reports to the local controller)::

    from orbiter.collab import JointInference, OnnxEstimator, hem_from_env

    with JointInference(OnnxEstimator(), hem_from_env()) as ji:  # MODEL_URL, HEM_NAME...
        is_hard, final, edge, cloud = ji.inference(x, post_process="softmax")

The CRDs are in :mod:`orbiter.collab.apis`. Names load on first use, so importing the
package costs nothing: no numpy, onnxruntime or torch until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cloud import (
        CloudClient,
        CloudDeadlineExceeded,
        CloudError,
        CloudModel,
        big_model_server,
    )
    from .context import Context, JointInferenceConfig, WorkerConfig
    from .estimators import (
        Estimator,
        OnnxEstimator,
        Predictor,
        TorchEstimator,
        call_accepting,
        instantiate,
        softmax,
    )
    from .joint import InferenceResult, JointInference, JointInferenceStats, MiningMode
    from .mining import (
        IBT,
        CloudOnly,
        CrossEntropy,
        EdgeOnly,
        HardExampleFilter,
        HemFilter,
        ParameterError,
        Random,
        Threshold,
        hem_from_env,
        hem_from_spec,
        parse_parameters,
    )
    from .registry import ClassFactory, ClassType, Registry, registry
    from .reporting import Reporter

_HOMES = {
    "cloud": (
        "CloudClient",
        "CloudDeadlineExceeded",
        "CloudError",
        "CloudModel",
        "big_model_server",
    ),
    "context": ("Context", "JointInferenceConfig", "WorkerConfig"),
    "estimators": (
        "Estimator",
        "OnnxEstimator",
        "Predictor",
        "TorchEstimator",
        "call_accepting",
        "instantiate",
        "softmax",
    ),
    "joint": ("InferenceResult", "JointInference", "JointInferenceStats", "MiningMode"),
    "mining": (
        "IBT",
        "CloudOnly",
        "CrossEntropy",
        "EdgeOnly",
        "HardExampleFilter",
        "HemFilter",
        "ParameterError",
        "Random",
        "Threshold",
        "hem_from_env",
        "hem_from_spec",
        "parse_parameters",
    ),
    "registry": ("ClassFactory", "ClassType", "Registry", "registry"),
    "reporting": ("Reporter",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "IBT",
    "ClassFactory",
    "ClassType",
    "CloudClient",
    "CloudDeadlineExceeded",
    "CloudError",
    "CloudModel",
    "CloudOnly",
    "Context",
    "CrossEntropy",
    "EdgeOnly",
    "Estimator",
    "HardExampleFilter",
    "HemFilter",
    "InferenceResult",
    "JointInference",
    "JointInferenceConfig",
    "JointInferenceStats",
    "MiningMode",
    "OnnxEstimator",
    "ParameterError",
    "Predictor",
    "Random",
    "Registry",
    "Reporter",
    "Threshold",
    "TorchEstimator",
    "WorkerConfig",
    "big_model_server",
    "call_accepting",
    "hem_from_env",
    "hem_from_spec",
    "instantiate",
    "parse_parameters",
    "registry",
    "softmax",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
