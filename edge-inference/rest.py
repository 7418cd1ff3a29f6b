"""The Open Inference Protocol over REST: a thin adapter from HTTP to the handlers.

``POST .../infer`` is answered by a plain ASGI front door: the body read once, parsed with
orjson, answered with orjson bytes — no routing table, no pydantic, no per-request dependency
solving (that path is what the benchmark measures). Every other endpoint is an ordinary
FastAPI route behind it. Errors are ``{"error": "<message>"}`` with the error's status."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from .errors import InferenceError, InvalidInput, RequestTooLarge
from .handling import InferenceService
from .messages import InferRequest, rest_request, rest_response
from .metrics import Receive, Scope, Send

__all__ = ["RestApp", "create_api"]

log = logging.getLogger(__name__)

_JSON = b"application/json"
_MODELS = "/v2/models/"


class _Disconnected(Exception):
    """The client went away before sending its whole request."""


def _json(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")


def _error(exc: InferenceError) -> Response:
    return _json({"error": exc.message}, exc.http_status)


def create_api(service: InferenceService) -> FastAPI:
    """Health, metadata, readiness and the model repository extension."""
    app = FastAPI(title="Orbiter inference", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, exc: InferenceError) -> Response:
        return _error(exc)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": service.live()})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return _json({"ready": service.ready}, 200 if service.ready else 400)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json(service.server_metadata())

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> Response:
        return _json(service.model_metadata(name))

    @app.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> Response:
        return _json(service.model_metadata(name, version))

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        return _ready(name, "")

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def version_ready(name: str, version: str) -> Response:
        return _ready(name, version)

    def _ready(name: str, version: str) -> Response:
        # The protocol answers readiness with the status: 200 true, 4xx false.
        if service.model_ready(name, version):
            return _json({"name": name, "ready": True})
        what = f"model {name!r}" + (f" version {version}" if version else "")
        return _json({"error": f"{what} is not ready", "name": name, "ready": False}, 400)

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        body = await _optional_json(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidInput(f"'ready' must be true or false, not {ready!r}")
        return _json(service.repository_index(ready))

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str) -> Response:
        await service.load(name)
        return _json({})

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(name: str) -> Response:
        await service.unload(name)
        return _json({})

    @app.post("/v2/repository/models/{name}/rollback")
    async def rollback(name: str) -> Response:
        await service.rollback(name)
        return _json({})

    return app


async def _optional_json(request: Request) -> dict[str, Any]:
    # A few bytes of options: read against a small cap, not however much a peer sends.
    body = await _read_body(request.receive, _OPTIONS_CAP)
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON request: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("the request must be a JSON object")
    return document


class RestApp:
    """The ASGI application: the infer front door, then the FastAPI app."""

    def __init__(self, service: InferenceService, *, max_request_bytes: int) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        self.api = create_api(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(_MODELS) and path.endswith("/infer"):
                parts = path[len(_MODELS) : -len("/infer")].split("/")
                if len(parts) == 1 and parts[0]:
                    await self._infer(parts[0], "", scope, receive, send)
                    return
                if len(parts) == 3 and parts[0] and parts[1] == "versions":
                    await self._infer(parts[0], parts[2], scope, receive, send)
                    return
        await self.api(scope, receive, send)

    async def _infer(
        self, model: str, version: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        header_length: int | None = None
        content_type = _JSON
        try:
            try:
                request = await self._request(model, version, scope, receive)
            except InferenceError:
                self.service.rejected(model, version, "rest")
                raise
            response = await self.service.infer(request, "rest")
            payload, header_length = rest_response(response)
            status = 200
            if header_length is not None:
                content_type = b"application/octet-stream"
        except InferenceError as exc:
            status, payload = exc.http_status, orjson.dumps({"error": exc.message})
        except _Disconnected:
            return
        except Exception as exc:
            log.exception("inference request to %s failed", model)
            status, payload = 500, orjson.dumps({"error": f"internal error: {exc}"})
        headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
        if header_length is not None:
            headers.append((b"inference-header-content-length", str(header_length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _request(
        self, model: str, version: str, scope: Scope, receive: Receive
    ) -> InferRequest:
        """The decoded request; the cap checked on Content-Length first, then while reading."""
        cap = self.max_request_bytes
        json_length = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                size = _byte_count(value, "Content-Length")
                if size > cap:
                    raise _too_large(size, cap)
            elif key == b"inference-header-content-length":
                json_length = _byte_count(value, "Inference-Header-Content-Length")
        body = await _read_body(receive, cap)
        return rest_request(model, version, body, json_length)


def _byte_count(value: bytes, header: str) -> int:
    if not value.isdigit():
        raise InvalidInput(f"{header} must be a byte count, got {value.decode('latin-1')!r}")
    return int(value)


def _too_large(size: int, cap: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"request body of {size} bytes exceeds the server's limit of {cap} bytes "
        f"(max_request_bytes)"
    )


_OPTIONS_CAP = 64 * 1024


async def _read_body(receive: Receive, cap: int) -> bytes:
    """The whole body, counting while reading (a chunked request has no Content-Length);
    beyond ``cap`` the rest is left unread (uvicorn discards it once we have answered)."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > cap:
            raise _too_large(len(body), cap)
        return body
    chunks = [body]
    total = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > cap:
            raise RequestTooLarge(
                f"request body exceeds the server's limit of {cap} bytes (max_request_bytes)"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
