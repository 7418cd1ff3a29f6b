"""MetaServer writes forwarded to the cloud while the link is up, and their answers.

A write through the node's local API (MetaServer) is sent upstream as one message and
answered by the cloud's reply with ``parent_msg_id`` = the request's ``msg_id`` (the shape
is in ``core``'s docstring). Unlike reports, a write is not spooled: its client is waiting
for the answer, and a write the cloud never saw fails with 503 rather than surprise anyone
later.
"""

from __future__ import annotations

import asyncio

import orjson

from ..protocol import (
    DELETE,
    ERROR,
    GROUP_RESOURCE,
    INSERT,
    PATCH,
    QUERY,
    UPDATE,
    Message,
    resource_path,
)
from .hub import EdgeHub, NotConnected
from .metaserver import PLURAL_TO_TYPE

__all__ = ["CloudForwarder", "http_answer", "request_resource"]


class CloudForwarder:
    """MetaServer's ``forward``: one write sent upstream, answered by the cloud's reply with
    ``parent_msg_id`` = the request's ``msg_id`` (the shape is in ``core``'s docstring)."""

    def __init__(self, hub: EdgeHub, *, timeout: float = 30.0) -> None:
        self._hub = hub
        self._timeout = timeout
        self._pending: dict[str, asyncio.Future[Message]] = {}

    async def __call__(
        self, method: str, path: str, query: str, body: bytes, *, content_type: str
    ) -> tuple[int, bytes]:
        content = {
            "method": method,
            "path": path,
            "query": query,
            "contentType": content_type,
            "body": body.decode(errors="replace"),
        }
        operation = _OPERATIONS.get(method, QUERY)
        request = Message(
            FORWARD_SOURCE, GROUP_RESOURCE, operation, request_resource(path), content
        )
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request.msg_id] = future
        try:
            await self._hub.send(request)  # NotConnected is a ConnectionError: MetaServer's 503
            async with asyncio.timeout(self._timeout):
                reply = await future
        finally:
            self._pending.pop(request.msg_id, None)
        return http_answer(reply)

    def resolve(self, message: Message) -> bool:
        """Hand a downstream reply to the write waiting for it; False if none is."""
        future = self._pending.get(message.parent_msg_id) if message.parent_msg_id else None
        if future is None:
            return False
        if not future.done():
            future.set_result(message)
        return True

    def fail_all(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotConnected("the edge is stopping"))


FORWARD_SOURCE = "metaserver"
_OPERATIONS = {"POST": INSERT, "PUT": UPDATE, "PATCH": PATCH, "DELETE": DELETE}
_ERROR_CODES = (
    ("not found", 404, "NotFound"),
    ("forbidden", 403, "Forbidden"),
    ("bad request", 400, "BadRequest"),
    ("conflict", 409, "Conflict"),
)


def request_resource(path: str) -> str:
    """``<ns>/<type>/<name>`` of an API path, as far as it names them (``null/unknown`` for
    what is not an API object path)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return "null/unknown"
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return "null/unknown"
    kind = PLURAL_TO_TYPE.get(rest[0], rest[0])
    return resource_path(namespace, kind, rest[1] if len(rest) > 1 else "")


def http_answer(reply: Message) -> tuple[int, bytes]:
    content = reply.content
    if reply.operation == ERROR:
        reason = str(content)
        code, status_reason = next(
            ((c, r) for prefix, c, r in _ERROR_CODES if reason.lower().startswith(prefix)),
            (500, "InternalError"),
        )
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": reason,
            "reason": status_reason,
            "code": code,
        }
        return code, orjson.dumps(status)
    if isinstance(content, dict) and isinstance(content.get("code"), int) and "body" in content:
        return int(content["code"]), orjson.dumps(content["body"])
    return 200, orjson.dumps(content)
