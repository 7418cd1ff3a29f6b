"""ONNX Runtime model server speaking the Open Inference Protocol v2 over REST and gRPC.

Models live in a Triton-style repository (``<repo>/<model>/<version>/model.onnx`` with an
optional ``config.pbtxt``); requests are batched dynamically per model; versions reload with
no failed requests and roll back; Prometheus metrics are served on their own port::

    async with InferenceServer("models/", http_port=0, grpc_port=0, metrics_port=0) as server:
        print(server.ports)

Imports onnxruntime, numpy and the web stack only: no torch, no mlflow."""

from .config import ModelConfig, VersionPolicy, parse_config
from .errors import (
    ConfigError,
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelUnavailable,
    RequestTooLarge,
)
from .handling import InferenceService
from .repository import ModelRepository
from .serving import InferenceServer, Ports

__all__ = [
    "ConfigError",
    "InferenceError",
    "InferenceServer",
    "InferenceService",
    "InvalidInput",
    "ModelConfig",
    "ModelNotFound",
    "ModelRepository",
    "ModelUnavailable",
    "Ports",
    "RequestTooLarge",
    "VersionPolicy",
    "parse_config",
]
