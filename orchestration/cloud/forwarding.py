"""Writes an edge node's MetaServer forwards to the cloud, performed as that node.

An app on the node POSTs/PUTs/PATCHes/DELETEs through the node's MetaServer; EdgeCore sends
the request upstream (source ``metaserver``, group ``resource``, content ``{method, path,
query, contentType, body}``). Here it runs against the API server as the user
``system:node:<name>``, so the node authorizer decides what the app may do, exactly as if the
node had sent the request over HTTPS with its certificate. The reply is a ``response`` whose
content is ``{"code": <HTTP status>, "body": <object or Status>}``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, unquote

from multidict import MultiDict

from ..apiserver import API, APIError
from ..apiserver.authorization import NODE_USER_PREFIX, NODES_GROUP, User, authorize
from ..apiserver.patching import PatchError
from ..apiserver.routing import (
    created_name,
    decode_body,
    perform_write,
    request_verb,
    resolve_target,
    split_api_path,
)
from ..protocol import Message

log = logging.getLogger(__name__)

__all__ = ["MAX_BODY", "SOURCE", "WriteForwarding"]

SOURCE = "metaserver"  # what EdgeCore's forwarder sends these as
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request size limit
_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class WriteForwarding:
    """Performs forwarded MetaServer writes against ``api`` as the node that sent them."""

    def __init__(self, api: API) -> None:
        self.api = api

    @staticmethod
    def handles(message: Message) -> bool:
        return message.source == SOURCE

    async def handle(self, node: str, message: Message) -> Message:
        """The reply to send back: always a ``response`` holding ``{code, body}``."""
        try:
            code, body = await self._perform(node, message.content)
        except APIError as exc:
            code, body = exc.code, exc.status()
        except PatchError as exc:
            err = APIError(exc.code, str(exc))
            code, body = err.code, err.status()
        except Exception:
            log.exception("node %s: internal error on a forwarded write %s", node, message.resource)
            err = APIError(500, "internal error; the server log has the details")
            code, body = err.code, err.status()
        return message.response({"code": code, "body": body})

    async def _perform(self, node: str, content: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(content, dict):
            raise APIError(400, "bad request: a forwarded write's content must be an object")
        method, path = content.get("method"), content.get("path")
        query, ctype, text = (
            content.get("query", ""),
            content.get("contentType", ""),
            content.get("body", ""),
        )
        if not all(isinstance(v, str) for v in (method, path, query, ctype, text)):
            raise APIError(
                400, "bad request: method, path, query, contentType and body must be strings"
            )
        assert isinstance(method, str) and isinstance(path, str)
        assert isinstance(query, str) and isinstance(ctype, str) and isinstance(text, str)
        raw = text.encode()
        if len(raw) > MAX_BODY:
            raise APIError(413, f"the request body is larger than the limit of {MAX_BODY} bytes")
        if method not in _METHODS:
            raise APIError(405, f"a forwarded write must be POST, PUT, PATCH or DELETE: {method}")
        parts = split_api_path(unquote(path)) if "?" not in path else None
        if parts is None:
            raise APIError(400, f"bad request: {path!r} is not an API resource path")
        target = resolve_target(self.api.registry, *parts)
        name = target.name
        if method == "POST" and not name:  # what is created is named in the body
            name = created_name(decode_body(raw, ctype))
        user = User(f"{NODE_USER_PREFIX}{node}", (NODES_GROUP,), node)
        verb = request_verb(method, target.name)
        denied = await authorize(
            user, verb, target.rt, target.namespace, name, target.subresource, self.api
        )
        if denied is not None:
            raise denied
        q: MultiDict[str] = MultiDict(parse_qsl(query, keep_blank_values=True))
        return await perform_write(self.api, target, method, q, raw, ctype)
