"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``): a thin adapter
from the protocol's messages to the handlers, on a ``grpc.aio`` server in the running loop.
Handlers parse requests themselves, so a malformed message is INVALID_ARGUMENT rather than
grpc's INTERNAL; an :class:`InferenceError` becomes its status code and message."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from .errors import InferenceError
from .handling import InferenceService
from .messages import grpc_request, grpc_response
from .protos import grpc_predict_v2_pb2 as pb

__all__ = ["SERVICE", "GrpcServer"]

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"

Handler = Callable[[Any], Awaitable[Any]]


class GrpcServer:
    """The service on ``host:port`` (0: a free port; :attr:`port` is the bound one)."""

    def __init__(
        self, service: InferenceService, host: str, port: int, *, max_message_bytes: int
    ) -> None:
        self.service = service
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.max_message_bytes = max_message_bytes
        self._server: Any = None

    async def start(self) -> int:
        options = [
            # Up to twice the cap reaches the handler, which refuses what is over the cap with
            # INVALID_ARGUMENT naming it (as REST's 400 does); grpc's transport refuses the rest
            # (RESOURCE_EXHAUSTED) before allocating it.
            ("grpc.max_receive_message_length", 2 * self.max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a busy port must fail, not be shared
        ]
        server = grpc.aio.server(options=options)
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                _adapted(method, kind, call, self.max_message_bytes),
                response_serializer=_serialized,
            )
            for method, (kind, call) in self._methods().items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        host = f"[{self.host}]" if ":" in self.host else self.host
        try:
            port: int = server.add_insecure_port(f"{host}:{self.requested_port}")
        except RuntimeError as exc:
            raise OSError(f"gRPC cannot listen on {host}:{self.requested_port}: {exc}") from None
        if not port:
            raise OSError(f"gRPC cannot listen on {host}:{self.requested_port}")
        await server.start()
        self._server, self.port = server, port
        return port

    async def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None  # drop it: grpc's poller lives while it does
        if server is not None:
            await server.stop(grace)

    def _methods(self) -> dict[str, tuple[Any, Handler]]:
        service = self.service

        async def server_live(request: Any) -> Any:
            return pb.ServerLiveResponse(live=service.live())

        async def server_ready(request: Any) -> Any:
            return pb.ServerReadyResponse(ready=service.ready)

        async def model_ready(request: Any) -> Any:
            try:
                ready = service.model_ready(request.name, request.version)
            except InferenceError:
                ready = False  # the boolean answer for an unknown model
            return pb.ModelReadyResponse(ready=ready)

        async def server_metadata(request: Any) -> Any:
            return pb.ServerMetadataResponse(**service.server_metadata())

        async def model_metadata(request: Any) -> Any:
            meta = service.model_metadata(request.name, request.version)
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )

        async def model_infer(request: Any) -> Any:
            try:
                decoded = grpc_request(request)
            except InferenceError:
                service.rejected(request.model_name, request.model_version, "grpc")
                raise
            return grpc_response(await service.infer(decoded, "grpc"))

        async def repository_index(request: Any) -> Any:
            rows = service.repository_index(request.ready)
            return pb.RepositoryIndexResponse(
                models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
            )

        async def load(request: Any) -> Any:
            await service.load(request.model_name)
            return pb.RepositoryModelLoadResponse()

        async def unload(request: Any) -> Any:
            await service.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return {
            "ServerLive": (pb.ServerLiveRequest, server_live),
            "ServerReady": (pb.ServerReadyRequest, server_ready),
            "ModelReady": (pb.ModelReadyRequest, model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, model_metadata),
            "ModelInfer": (pb.ModelInferRequest, model_infer),
            "RepositoryIndex": (pb.RepositoryIndexRequest, repository_index),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, load),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, unload),
        }


def _adapted(
    method: str, kind: Any, call: Handler, max_bytes: int
) -> Callable[[bytes, Any], Awaitable[Any]]:
    async def handle(raw: bytes, context: Any) -> Any:
        if len(raw) > max_bytes:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request of {len(raw)} bytes is over the server's max_request_bytes ({max_bytes})",
            )
        try:
            request = kind.FromString(raw)
        except Exception as exc:  # protobuf's DecodeError
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request: {exc}"
            )
        try:
            return await call(request)
        except InferenceError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], exc.message)
        except Exception as exc:
            log.exception("gRPC %s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")

    return handle


def _serialized(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
