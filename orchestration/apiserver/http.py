"""The HTTP transport: Kubernetes REST paths mapped onto ``API`` (a thin adapter)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..apis import ResourceType
from ..store import CompactedError, WatchOverflowError
from . import discovery, errors
from .authorization import User, authorize, node_user
from .errors import APIError
from .fielderrors import go_quote
from .handling import API, WARNINGS
from .openapi import OpenAPIDocs
from .patching import PatchError
from .podlogs import choose_container, open_log, parse_options
from .routing import (
    Target,
    created_name,
    decode_body,
    perform_write,
    request_verb,
    resolve_target,
)
from .selection import build_matcher
from .tables import to_table

log = logging.getLogger(__name__)

_MAX_INT_PARAM = 2**31 - 1  # limit and timeoutSeconds are int32/int64 in Kubernetes
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request size limit
DEFAULT_WATCH_TIMEOUT = 1800.0
_ANONYMOUS = frozenset({"/version", "/livez", "/readyz", "/healthz"})
_PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"

USER = web.RequestKey("user", User)  # who is asking, set for every authenticated request

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(exc: APIError) -> web.Response:
    return _json(exc.status(), exc.code)


class HTTPFrontend:
    def __init__(
        self,
        api: API,
        *,
        tokens: dict[str, str],
        server_address: str = "",
        bookmark_interval: float = 60.0,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.api = api
        self._token_users = {token: User(name) for token, name in tokens.items()}
        self.server_address = server_address
        self.bookmark_interval = bookmark_interval
        self.ready = ready
        self.openapi = OpenAPIDocs(api.registry)
        self._watches: set[asyncio.Task[Any]] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        for task in list(self._watches):
            task.cancel()

    def authenticate(self, request: web.Request) -> User | None:
        """The bearer token's user, else the node a verified client certificate names.

        A wrong token is refused even with a certificate: bad credentials are never ignored.
        """
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:].strip(" \t").encode("utf-8", "surrogateescape")
            if not given:
                return None
            for token, user in self._token_users.items():
                if hmac.compare_digest(token.encode(), given):
                    return user
            return None
        # TLS verified the certificate against the cluster CA (CERT_OPTIONAL); a certificate
        # it did not verify fails the handshake. Only node certificates are users here.
        return node_user(request.get_extra_info("peercert"))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path not in _ANONYMOUS:
            user = self.authenticate(request)
            if user is None:
                return _error(APIError(401, "Unauthorized"))
            request[USER] = user
        try:
            return await handler(request)
        except APIError as exc:
            return _error(exc)
        except PatchError as exc:
            return _error(APIError(exc.code, str(exc)))
        except web.HTTPRequestEntityTooLarge:
            return _error(
                APIError(413, f"the request body is larger than the limit of {MAX_BODY} bytes")
            )
        except web.HTTPException:
            raise
        except Exception:
            log.exception("internal error serving %s %s", request.method, request.path_qs)
            return _error(APIError(500, "internal error; the server log has the details"))

    # --- routing -------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        segs = [s for s in path.split("/") if s]
        if not segs:
            return _json(
                {
                    "paths": [
                        "/api",
                        "/apis",
                        "/livez",
                        "/openapi/v2",
                        "/openapi/v3",
                        "/readyz",
                        "/version",
                    ]
                }
            )
        head = segs[0]
        if head in ("livez", "healthz") and len(segs) == 1:
            return web.Response(text="ok")
        if head == "readyz" and len(segs) == 1:
            return (
                web.Response(text="ok")
                if self.ready()
                else web.Response(text="not ready", status=503)
            )
        if head == "version" and len(segs) == 1:
            return _json(discovery.version_info())
        if head == "openapi":
            return self._openapi(request, segs[1:])
        if head == "api":
            if len(segs) == 1:
                return _json(discovery.core_versions(self.server_address))
            return await self._group_version(request, "", segs[1], segs[2:])
        if head == "apis":
            if len(segs) == 1:
                return _json(discovery.group_list(self.api.registry))
            if len(segs) == 2:
                doc = discovery.group(self.api.registry, segs[1])
                if doc is None:
                    raise APIError(404, "the server could not find the requested resource")
                return _json(doc)
            return await self._group_version(request, segs[1], segs[2], segs[3:])
        raise APIError(404, "the server could not find the requested resource")

    def _openapi(self, request: web.Request, rest: list[str]) -> web.Response:
        if rest == ["v2"]:
            return web.Response(body=self.openapi.v2_protobuf(), content_type=_PROTOBUF_V2)
        if rest == ["v3"]:
            return web.Response(body=self.openapi.v3_index(), content_type="application/json")
        if len(rest) > 1 and rest[0] == "v3":
            doc = self.openapi.v3_document("/".join(rest[1:]))
            if doc is not None:
                return web.Response(body=doc, content_type="application/json")
        raise APIError(404, "the server could not find the requested resource")

    async def _group_version(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        if not rest:
            doc = discovery.resource_list(self.api.registry, group, version)
            if doc is None:
                raise APIError(404, "the server could not find the requested resource")
            return _json(doc)
        target = resolve_target(self.api.registry, group, version, rest)
        return await self._verb(request, target)

    async def _verb(self, request: web.Request, target: Target) -> web.StreamResponse:
        rt, namespace, name, sub = target.rt, target.namespace, target.name, target.subresource
        q = request.query
        method = request.method
        ns = namespace or ""
        api = self.api
        if request[USER].node is not None:  # the admin skips this: no cost on its requests
            await self._authorize(request, rt, namespace, name, sub)
        if sub == "log":
            if method != "GET":
                raise errors.method_not_allowed(rt, f"{method} on {rt.plural}/log")
            return await self._pod_log(request, rt, ns, name)
        if method == "GET":
            if name:
                if sub == "scale":
                    return _json(await api.get_scale(rt, ns, name))
                obj = await api.get(rt, ns, name)
                return self._maybe_table(request, rt, [obj], obj, single=True)
            matches = build_matcher(rt, q.get("labelSelector", ""), q.get("fieldSelector", ""))
            if q.get("watch") in ("1", "true", "True"):
                return await self._watch(request, rt, namespace, matches)
            listed = await api.list(
                rt,
                namespace,
                matches=matches,
                limit=_int_param(q, "limit"),
                continue_token=q.get("continue", ""),
            )
            return self._maybe_table(request, rt, listed["items"], listed)
        warnings: list[str] = []
        reset = WARNINGS.set(warnings)
        try:
            status, obj = await perform_write(
                api,
                target,
                method,
                q,
                await request.read(),
                request.headers.get("Content-Type", ""),
            )
        finally:
            WARNINGS.reset(reset)
        resp = _json(obj, status)
        for text in dict.fromkeys(warnings):  # once each, as kube-apiserver
            resp.headers.add("Warning", f"299 - {go_quote(text)}")
        return resp

    async def _authorize(
        self, request: web.Request, rt: ResourceType, namespace: str | None, name: str, sub: str
    ) -> None:
        method = request.method
        watch = request.query.get("watch") in ("1", "true", "True")
        verb = request_verb(method, name, watch=watch)
        if method == "POST" and not name:  # what is created is named in the body
            name = created_name(await _body(request))
        denied = await authorize(request[USER], verb, rt, namespace, name, sub, self.api)
        if denied is not None:
            raise denied

    async def _pod_log(
        self, request: web.Request, rt: ResourceType, ns: str, name: str
    ) -> web.StreamResponse:
        wanted, opts = parse_options(request.query)
        pod = await self.api.get(rt, ns, name)
        opts = dataclasses.replace(opts, container=choose_container(pod, wanted))
        first, stream = await open_log(self.api.pod_logs, pod, opts)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        task = asyncio.current_task()
        assert task is not None
        self._watches.add(task)  # cancelled on shutdown, like watches
        try:
            await resp.prepare(request)
            if first:
                await resp.write(first)
            # A client that goes away cancels this handler (handler_cancellation), which
            # closes the stream and so tells the node to stop following.
            async for chunk in stream:
                await resp.write(chunk)
        except ConnectionResetError:
            pass  # the client went away: closing the stream tells the source to stop
        finally:
            self._watches.discard(task)
            await stream.aclose()
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp

    # --- output --------------------------------------------------------------------------

    def _maybe_table(
        self,
        request: web.Request,
        rt: ResourceType,
        objs: list[dict[str, Any]],
        whole: dict[str, Any],
        single: bool = False,
    ) -> web.Response:
        if _wants_table(request):
            meta = {"resourceVersion": whole.get("metadata", {}).get("resourceVersion", "")}
            if not single and whole.get("metadata", {}).get("continue"):
                meta["continue"] = whole["metadata"]["continue"]
            include = request.query.get("includeObject", "Metadata")
            return _json(to_table(rt, objs, meta, include))
        return _json(whole)

    async def _watch(
        self,
        request: web.Request,
        rt: ResourceType,
        namespace: str | None,
        matches: Callable[[dict[str, Any]], bool] | None,
    ) -> web.StreamResponse:
        q = request.query
        timeout = float(_int_param(q, "timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        try:
            stream = await self.api.watch(
                rt,
                namespace,
                resource_version=q.get("resourceVersion", ""),
                matches=matches,
                bookmark_interval=self.bookmark_interval if bookmarks else None,
            )
        except APIError as exc:
            if exc.code != 410:
                raise
            # Like kube-apiserver: a watch from a compacted revision is a 200 stream holding one
            # ERROR event. Clients (kopf, client-go, the kubernetes client) re-list on it; an
            # HTTP 410 is a failed request to some of them.
            gone = web.StreamResponse(headers={"Content-Type": "application/json"})
            gone.enable_chunked_encoding()
            await gone.prepare(request)
            await gone.write(orjson.dumps({"type": "ERROR", "object": exc.status()}) + b"\n")
            await gone.write_eof()
            return gone
        table = _wants_table(request)
        include = q.get("includeObject", "Metadata")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._watches.add(task)
        try:
            async with asyncio.timeout(timeout):
                async for ev in stream:
                    if ev.type == "BOOKMARK" and not bookmarks:
                        continue
                    if table and ev.type != "BOOKMARK":
                        line = (
                            orjson.dumps(
                                {"type": ev.type, "object": to_table(rt, [ev.object], {}, include)}
                            )
                            + b"\n"
                        )
                    else:
                        line = ev.line()
                    await resp.write(line)
        except TimeoutError:
            pass
        except ConnectionResetError:
            pass
        except CompactedError as exc:
            err = APIError(410, f"too old resource version: {exc}", reason="Expired")
            with contextlib.suppress(Exception):
                await resp.write(orjson.dumps({"type": "ERROR", "object": err.status()}) + b"\n")
        except WatchOverflowError:
            pass  # the client re-watches from the last resourceVersion it saw
        finally:
            self._watches.discard(task)
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    first = accept.split(",")[0]
    return "as=Table" in first


def _int_param(q: Any, name: str) -> int:
    raw = q.get(name)
    if raw in (None, ""):
        return 0
    try:
        value = int(raw) if len(raw) <= 18 else -1
    except ValueError:
        raise errors.bad_request(f"{name}: invalid value {raw!r}: must be an integer") from None
    if not 0 <= value <= _MAX_INT_PARAM:
        raise errors.bad_request(
            f"{name}: invalid value {raw!r}: must be between 0 and {_MAX_INT_PARAM}"
        )
    return value


async def _body(request: web.Request) -> Any:
    return decode_body(await request.read(), request.content_type)
