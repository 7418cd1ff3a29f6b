"""The failures a request can meet, each knowing its REST status and gRPC status code, so the
handlers raise one exception and every transport answers it the protocol's way."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InferenceError",
    "InvalidInput",
    "ModelNotFound",
    "ModelUnavailable",
    "RequestTooLarge",
]


class InferenceError(Exception):
    """Base of the errors answered to clients: ``http_status`` for REST, ``grpc_code`` (a
    ``grpc.StatusCode`` member name, kept as text so this module needs no grpc) for gRPC."""

    http_status = 500
    grpc_code = "INTERNAL"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class InvalidInput(InferenceError):
    """The request is malformed or does not fit the model: 400 / INVALID_ARGUMENT."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class RequestTooLarge(InvalidInput):
    """Over ``max_request_bytes``: 400 like any bad request, its message naming the cap."""


class ModelNotFound(InferenceError):
    """Unknown model or version: 404 / NOT_FOUND."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelUnavailable(InferenceError):
    """Known but not serving (failed load, unloaded, stopping): 503 / UNAVAILABLE."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class ConfigError(ValueError):
    """A ``config.pbtxt`` that cannot be parsed or is not one we can honour."""
