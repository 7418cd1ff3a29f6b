"""One gRPC service on a Unix socket, both DMI sides use it: EdgeCore's DeviceManagerService
and each mapper's DeviceMapperService. Handlers parse requests themselves, so a malformed one
is INVALID_ARGUMENT (not grpc's INTERNAL), and their exceptions become statuses."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from .converting import MAX_MESSAGE_BYTES, status_of

__all__ = ["Call", "RateLimited", "UnixServer"]

log = logging.getLogger(__name__)

Call = Callable[[Any], Awaitable[Any]]  # a parsed request -> its response message


class RateLimited(Exception):
    """Answered RESOURCE_EXHAUSTED."""


class UnixServer:
    """``service`` on ``unix:<path>``; ``methods`` maps each RPC name to (request type, call)."""

    def __init__(self, path: str, service: str, methods: Mapping[str, tuple[Any, Call]]) -> None:
        self.path = path
        self._service = service
        self._methods = dict(methods)
        self._server: Any = None

    async def start(self) -> None:
        _prepare_socket(self.path)
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                _adapted(name, kind, call), response_serializer=_serialized
            )
            for name, (kind, call) in self._methods.items()
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(self._service, handlers),)
        )
        server.add_insecure_port(f"unix:{self.path}")
        await server.start()
        self._server = server
        log.info("DMI: %s listening on %s", self._service, self.path)

    async def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None  # drop it: grpc's poller lives while it does
        if server is not None:
            await server.stop(grace)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _adapted(method: str, kind: Any, call: Call) -> Callable[[bytes, Any], Awaitable[Any]]:
    async def handle(raw: bytes, context: Any) -> Any:
        try:
            return await call(kind.FromString(raw))
        except RateLimited as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except Exception as exc:
            code, message = status_of(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("DMI: %s failed", method)
            await context.abort(code, message)

    return handle


def _serialized(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _prepare_socket(path: str) -> None:
    """Makes the socket's directory; removes a socket left by a previous run (the bind would
    fail), but nothing else."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)
