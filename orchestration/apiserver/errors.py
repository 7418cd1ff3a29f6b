"""Kubernetes ``Status`` errors: every refusal carries the right code, reason and message."""

from __future__ import annotations

from typing import Any

from ..apis import ResourceType

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class APIError(Exception):
    """A refusal the API returns as a ``Status`` object."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(rt: ResourceType, name: str) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "kind": rt.plural}
    if rt.group:
        d["group"] = rt.group
    return d


def not_found(rt: ResourceType, name: str) -> APIError:
    return APIError(404, f'{rt.group_resource} "{name}" not found', details=_details(rt, name))


def already_exists(rt: ResourceType, name: str) -> APIError:
    return APIError(
        409,
        f'{rt.group_resource} "{name}" already exists',
        reason="AlreadyExists",
        details=_details(rt, name),
    )


def conflict(rt: ResourceType, name: str) -> APIError:
    return APIError(
        409,
        f'Operation cannot be fulfilled on {rt.group_resource} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details=_details(rt, name),
    )


def invalid(rt: ResourceType, name: str, causes: list[tuple[str, str]]) -> APIError:
    """422 with one cause per (field path, message); the message lists them all."""
    text = "; ".join(f"{field}: {msg}" if field else msg for field, msg in causes)
    if len(causes) > 1:
        text = f"[{', '.join(f'{f}: {m}' if f else m for f, m in causes)}]"
    details = _details(rt, name)
    details["kind"] = rt.kind
    details["causes"] = [
        {"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes
    ]
    return APIError(422, f'{rt.kind} "{name}" is invalid: {text}', details=details)


def bad_request(message: str) -> APIError:
    return APIError(400, message)


def forbidden(message: str) -> APIError:
    return APIError(403, message)


def expired(message: str) -> APIError:
    return APIError(410, message, reason="Expired")


def method_not_allowed(rt: ResourceType, verb: str) -> APIError:
    return APIError(405, f"{verb} is not supported on resources of kind {rt.kind!r}")
