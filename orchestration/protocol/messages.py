"""KubeEdge's message envelope, as it travels between CloudHub and EdgeHub (one JSON text frame).

``{"header": {"msg_id", "parent_msg_id", "timestamp", "resourceversion", "sync"},
"route": {"source", "group", "operation", "resource"}, "content": ...}`` — field names and
meanings as in KubeEdge's beehive ``model.Message`` (reference/kubeedge.md §2.2-2.3).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_FRAME = 8 * 1024 * 1024  # default cap on one encoded message; peers may set their own
_MAX_ROUTE_FIELD = 4096  # resource paths are short; anything longer is an attack or a bug

# Operations (a subset of KubeEdge's; the ones this project sends or accepts).
INSERT, UPDATE, PATCH, DELETE, QUERY = "insert", "update", "patch", "delete", "query"
RESPONSE, ERROR, KEEPALIVE, UPLOAD = "response", "error", "keepalive", "upload"

# Groups.
GROUP_RESOURCE, GROUP_TWIN, GROUP_USER, GROUP_META = "resource", "twin", "user", "meta"

# The sources a node's built-in modules send as. Extensions (EdgeCore's and the cloud's
# ``upstream`` handlers) use other names, so the cloud never mistakes one for the other.
BUILTIN_SOURCES = frozenset(
    {"edged", "metaserver", "metamanager", "eventbus", "twin", "edgestream", "devicecontroller"}
)


class MessageError(ValueError):
    """A frame that is not a valid message; the message says what is wrong."""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class Message:
    source: str
    group: str
    operation: str
    resource: str
    content: Any = None
    msg_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    parent_msg_id: str = ""
    timestamp: int = field(default_factory=_now_ms)
    resource_version: str = ""
    sync: bool = False

    def response(self, content: Any = "OK", *, source: str = "") -> Message:
        """The reply KubeEdge builds: same route, operation ``response``, parent = this id."""
        return Message(
            source=source or self.source,
            group=self.group,
            operation=RESPONSE,
            resource=self.resource,
            content=content,
            parent_msg_id=self.msg_id,
        )

    def error(self, reason: str, *, source: str = "") -> Message:
        reply = self.response(reason, source=source)
        reply.operation = ERROR
        return reply

    def to_dict(self) -> dict[str, Any]:
        header: dict[str, Any] = {"msg_id": self.msg_id, "timestamp": self.timestamp}
        if self.parent_msg_id:
            header["parent_msg_id"] = self.parent_msg_id
        if self.resource_version:
            header["resourceversion"] = self.resource_version
        if self.sync:
            header["sync"] = True
        return {
            "header": header,
            "route": {
                "source": self.source,
                "group": self.group,
                "operation": self.operation,
                "resource": self.resource,
            },
            "content": self.content,
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def decode(cls, frame: bytes | str, *, max_size: int = MAX_FRAME) -> Message:
        """Parse and check one frame; MessageError names what is wrong."""
        if len(frame) > max_size:
            raise MessageError(f"message of {len(frame)} bytes is over the {max_size}-byte cap")
        try:
            data = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise MessageError(f"message is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Message:
        if not isinstance(data, dict):
            raise MessageError("message must be a JSON object with header, route and content")
        header, route = data.get("header"), data.get("route")
        if not isinstance(header, dict):
            raise MessageError("message.header must be an object")
        if not isinstance(route, dict):
            raise MessageError("message.route must be an object")
        strings: dict[str, str] = {}
        for name, where in (
            ("msg_id", header),
            ("parent_msg_id", header),
            ("resourceversion", header),
            ("source", route),
            ("group", route),
            ("operation", route),
            ("resource", route),
        ):
            value = where.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise MessageError(f"message field {name!r} must be a string")
            if len(value) > _MAX_ROUTE_FIELD:
                raise MessageError(f"message field {name!r} is over {_MAX_ROUTE_FIELD} characters")
            strings[name] = value
        if not strings["msg_id"]:
            raise MessageError("message.header.msg_id is required")
        if not strings["operation"]:
            raise MessageError("message.route.operation is required")
        timestamp = header.get("timestamp", 0)
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise MessageError("message.header.timestamp must be an integer (milliseconds)")
        sync = header.get("sync", False)
        if not isinstance(sync, bool):
            raise MessageError("message.header.sync must be a boolean")
        return cls(
            source=strings["source"],
            group=strings["group"],
            operation=strings["operation"],
            resource=strings["resource"],
            content=data.get("content"),
            msg_id=strings["msg_id"],
            parent_msg_id=strings["parent_msg_id"],
            timestamp=timestamp,
            resource_version=strings["resourceversion"],
            sync=sync,
        )


def resource_path(namespace: str | None, kind: str, name: str = "") -> str:
    """``<namespace>/<type>[/<name>]`` as on the wire; cluster-scoped objects use ``null``."""
    path = f"{namespace or 'null'}/{kind}"
    return f"{path}/{name}" if name else path


def parse_resource(resource: str) -> tuple[str | None, str, str]:
    """The inverse of ``resource_path``: (namespace or None, type, name or "")."""
    parts = resource.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise MessageError(f"resource {resource!r} is not <namespace>/<type>[/<name>]")
    namespace = None if parts[0] == "null" else parts[0]
    return namespace, parts[1], parts[2] if len(parts) == 3 else ""
