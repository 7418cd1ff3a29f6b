"""MetaServer: a local, read-mostly Kubernetes API for apps on the node (kubeedge.md §3.4).

Plain HTTP on loopback only (no authentication: anything that can reach 127.0.0.1 is on the
node), default port 10550 as KubeEdge. Reads (get, list, watch, label and field selectors) are
served from the MetaManager's store, so they work offline. Writes go to the cloud through
``forward`` while the node is online and are refused with 503 while it is not.

resourceVersions: objects keep the cloud's ``metadata.resourceVersion``; a list's
``metadata.resourceVersion`` and a watch's ``resourceVersion`` are LOCAL store revisions (the
edge store's log, not the cloud's). Clients resume a broken watch from the last object's
resourceVersion, a cloud one, so the server remembers which local revision each resourceVersion
it handed out stands for; one it never handed out (or forgot, or from before a restart) is
answered with 410 Expired, and the client lists again instead of silently missing events.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import platform
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import orjson
from aiohttp import web

from ..apis import BUILTIN_RESOURCES, ResourceType
from ..protocol import listening_socket
from ..store import CompactedError, WatchOverflowError
from .metamanager import Change, MetaManager, SecretsError

__all__ = [
    "DEFAULT_PORT",
    "PLURAL_TO_TYPE",
    "SERVED_RESOURCES",
    "TYPE_TO_PLURAL",
    "Forward",
    "MetaServer",
    "Selector",
    "SelectorError",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 10550
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request body cap
_READ_VERBS = ["get", "list", "watch"]
_WRITE_VERBS = ["create", "delete", "patch", "update"]
_RESUMES = 10_000  # resourceVersions remembered for watch resumption

# Built-in REST resources the edge can hold; the KubeEdge type is the lowercase kind.
SERVED_RESOURCES: tuple[ResourceType, ...] = tuple(
    rt for rt in BUILTIN_RESOURCES if rt.plural != "customresourcedefinitions"
)
PLURAL_TO_TYPE: dict[str, str] = {rt.plural: rt.kind.lower() for rt in SERVED_RESOURCES}
TYPE_TO_PLURAL: dict[str, str] = {t: p for p, t in PLURAL_TO_TYPE.items()}


class Forward(Protocol):
    """Sends one write to the cloud: (HTTP status, response body). ``query`` is the raw query
    string; ``content_type`` tells the patch flavours apart. Raises ConnectionError (the
    hub's NotConnected) when the link is down."""

    def __call__(
        self, method: str, path: str, query: str, body: bytes, *, content_type: str
    ) -> Awaitable[tuple[int, bytes]]: ...


class _Refusal(Exception):
    """An error answered as a Kubernetes ``Status``."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

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


def _bad_request(message: str) -> _Refusal:
    return _Refusal(400, "BadRequest", message)


def _no_such_path() -> _Refusal:
    return _Refusal(404, "NotFound", "the server could not find the requested resource")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


# -- selectors (the edge may not import the API server's parser) ------------------------------

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_REQUIREMENT = re.compile(
    rf"\s*(?:!\s*(?P<absent>{_KEY})|(?P<key>{_KEY})(?:\s*(?P<op>==|!=|=)\s*(?P<value>[^\s,]*)"
    rf"|\s+(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?)\s*"
)
_FIELD = re.compile(r"\s*(?P<field>[A-Za-z][A-Za-z0-9.]*)\s*(?P<op>==|!=|=)(?P<value>[^,]*)")
_FIELDS = {"metadata.name", "metadata.namespace"}
_KIND_FIELDS = {  # kube-apiserver's per-kind field labels, the commonly used ones
    "Pod": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "status.phase"},
    "Secret": {"type"},
    "Event": {"involvedObject.kind", "involvedObject.name", "reason", "type"},
    "Node": {"spec.unschedulable"},
}


class SelectorError(ValueError):
    pass


def _split_top(text: str) -> list[str]:
    """Split at the commas outside parentheses: ``a in (x,y),b`` is two requirements."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class Selector:
    """A label and a field selector, as one predicate over objects."""

    def __init__(self, labels: str, fields: str, kind: str) -> None:
        self._labels = [self._label(p) for p in _split_top(labels)] if labels.strip() else []
        allowed = _FIELDS | _KIND_FIELDS.get(kind, set())
        self._fields = (
            [self._field(p, allowed) for p in fields.split(",")] if fields.strip() else []
        )

    @property
    def empty(self) -> bool:
        return not self._labels and not self._fields

    @staticmethod
    def _label(text: str) -> tuple[str, str, frozenset[str]]:
        m = _REQUIREMENT.fullmatch(text)
        if m is None:
            raise SelectorError(f"unable to parse requirement: {text.strip()!r}")
        if m["absent"]:
            return m["absent"], "!", frozenset()
        if m["op"]:
            values = [m["value"]]
        elif m["set"]:
            values = [v.strip() for v in m["values"].split(",")]
        else:
            return m["key"], "exists", frozenset()
        for value in values:
            if len(value) > 63 or not _VALUE.fullmatch(value):
                raise SelectorError(f"invalid label value {value!r} in {text.strip()!r}")
        op = m["set"] or ("!=" if m["op"] == "!=" else "=")
        return m["key"], op, frozenset(values)

    @staticmethod
    def _field(text: str, allowed: set[str]) -> tuple[str, bool, str]:
        m = _FIELD.fullmatch(text)
        if m is None:
            raise SelectorError(f"invalid field selector {text.strip()!r}")
        if m["field"] not in allowed:
            raise SelectorError(f"field label not supported: {m['field']}")
        return m["field"], m["op"] != "!=", m["value"].strip()

    def __call__(self, obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for key, op, values in self._labels:
            present = key in labels
            if (op == "exists" and not present) or (op == "!" and present):
                return False
            if op in ("=", "in") and (not present or labels[key] not in values):
                return False
            if op in ("!=", "notin") and present and labels[key] in values:
                return False
        return all(
            (_field_value(obj, field) == value) == equal for field, equal, value in self._fields
        )


# -- the server --------------------------------------------------------------------------------


class _Resumes:
    """Which local revision each resourceVersion this server handed out stands for.

    A cloud RV can equal a local revision by chance; the smaller mapping is kept, so such a
    collision replays a few events twice (harmless to informers) and never skips one.
    """

    def __init__(self, size: int = _RESUMES) -> None:
        self._size = size
        self._map: collections.OrderedDict[str, int] = collections.OrderedDict()

    def note(self, rv: Any, revision: int, *, floor: int = 0) -> None:
        """``floor``: the compacted revision; a mapping below it is useless and replaced."""
        if not isinstance(rv, str) or not rv:
            return
        known = self._map.get(rv)
        self._map[rv] = revision if known is None or known < floor else min(known, revision)
        self._map.move_to_end(rv)
        if len(self._map) > self._size:
            self._map.popitem(last=False)

    def resolve(self, rv: str) -> int | None:
        return self._map.get(rv)


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetaServer:
    """The MetaServer over ``meta``; ``port=0`` picks a free port (see ``port`` once started).

    ``forward`` (when given) carries writes to the cloud while ``connected()`` is true;
    without ``forward`` writes get 405, while offline 503.
    """

    def __init__(
        self,
        meta: MetaManager,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        forward: Forward | None = None,
        connected: Callable[[], bool] | None = None,
        resources: Iterable[ResourceType] = SERVED_RESOURCES,
        watch_timeout: float = 1800.0,
        forward_timeout: float = 60.0,
    ) -> None:
        if not _loopback(host):
            raise ValueError(f"the MetaServer has no authentication; {host!r} is not loopback")
        self.meta = meta
        self.host, self.requested_port, self.port = host, port, 0
        self._forward = forward
        self._connected = connected or (lambda: True)
        self._types = {(rt.group, rt.version, rt.plural): rt for rt in resources}
        self._watch_timeout, self._forward_timeout = watch_timeout, forward_timeout
        self._resumes = _Resumes()
        self._watches: set[asyncio.Timeout] = set()  # each open watch's deadline
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_shutdown.append(self._on_shutdown)
        # handler_cancellation: a watch whose client went away ends at once.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0
        )
        await runner.setup()
        try:
            sock = listening_socket(self.host, self.requested_port)
            try:
                self.port = sock.getsockname()[1]
                await web.SockSite(runner, sock).start()
            except BaseException:
                sock.close()
                raise
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("MetaServer listening on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MetaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_shutdown(self, app: web.Application) -> None:
        # Ending a watch by its deadline (not by cancelling it) closes the chunked stream
        # cleanly, so clients see the end of a watch rather than a broken connection.
        now = asyncio.get_running_loop().time()
        for deadline in list(self._watches):
            with contextlib.suppress(RuntimeError):  # already expiring by itself
                deadline.reschedule(now)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            parts = [p for p in request.path.split("/") if p]
            if request.method == "GET":
                return await self._read(request, parts)
            if parts and parts[0] in ("api", "apis"):
                return await self._write(request)
            raise _Refusal(405, "MethodNotAllowed", f"{request.method} is not allowed here")
        except _Refusal as exc:
            return _json(exc.status(), exc.code)
        except SecretsError as exc:
            log.error("cannot read a sealed object: %s", exc)
            return _json(_Refusal(500, "InternalError", str(exc)).status(), 500)
        except Exception as exc:
            log.exception("MetaServer failed on %s %s", request.method, request.path_qs)
            return _json(_Refusal(500, "InternalError", f"internal error: {exc!r}").status(), 500)

    # -- reads -----------------------------------------------------------------------------

    async def _read(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        match parts:
            case ["version"]:
                return _json(_version())
            case ["healthz" | "livez" | "readyz"]:
                return web.Response(text="ok")
            case ["api"]:
                return _json({"kind": "APIVersions", "versions": ["v1"]})
            case ["apis"]:
                groups = sorted({g for g, _, _ in self._types if g})
                return _json(
                    {
                        "kind": "APIGroupList",
                        "apiVersion": "v1",
                        "groups": [self._group(g) for g in groups],
                    }
                )
            case ["apis", group] if any(g == group for g, _, _ in self._types):
                return _json({"kind": "APIGroup", "apiVersion": "v1", **self._group(group)})
            case ["api", version]:
                return self._resource_list("", version)
            case ["apis", group, version]:
                return self._resource_list(group, version)
            case ["api", version, *rest]:
                return await self._serve(request, "", version, rest)
            case ["apis", group, version, *rest]:
                return await self._serve(request, group, version, rest)
        raise _no_such_path()

    def _group(self, group: str) -> dict[str, Any]:
        versions = sorted({v for g, v, _ in self._types if g == group})
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _resource_list(self, group: str, version: str) -> web.Response:
        types = sorted(
            (rt for (g, v, _), rt in self._types.items() if g == group and v == version),
            key=lambda rt: rt.plural,
        )
        if not types:
            raise _no_such_path()
        verbs = _READ_VERBS + (_WRITE_VERBS if self._forward is not None else [])
        resources: list[dict[str, Any]] = []
        for rt in types:
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.singular,
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": verbs,
                    **({"shortNames": list(rt.short_names)} if rt.short_names else {}),
                }
            )
            if "status" in rt.subresources:
                sub_verbs = ["get"] + (["patch", "update"] if self._forward is not None else [])
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": sub_verbs,
                    }
                )
        return _json(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources,
            }
        )

    def _locate(
        self, group: str, version: str, rest: list[str]
    ) -> tuple[ResourceType, str | None, str, str]:
        """(type, namespace, name, subresource) of a resource path below the group-version."""
        namespaced = self._types.get((group, version, rest[2])) if len(rest) >= 3 else None
        if rest[0] == "namespaces" and namespaced is not None and namespaced.namespaced:
            if len(rest) > 5:
                raise _no_such_path()
            rest += ["", ""]
            return namespaced, rest[1], rest[3], rest[4]
        rt = self._types.get((group, version, rest[0]))
        if rt is None or len(rest) > 3 or (rt.namespaced and len(rest) > 1):
            raise _no_such_path()
        rest += ["", ""]
        return rt, None, rest[1], rest[2]

    async def _serve(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        rt, namespace, name, sub = self._locate(group, version, rest)
        kind = PLURAL_TO_TYPE.get(rt.plural, rt.kind.lower())
        if name:
            if (sub and sub not in rt.subresources) or sub not in ("", "status"):
                raise _no_such_path()
            obj = await self.meta.get(namespace, kind, name)
            if obj is None:
                group_resource = rt.group_resource
                raise _Refusal(
                    404,
                    "NotFound",
                    f'{group_resource} "{name}" not found',
                    name=name,
                    kind=rt.plural,
                    **({"group": rt.group} if rt.group else {}),
                )
            return _json(_typed(rt, obj))
        q = request.query
        try:
            selector = Selector(q.get("labelSelector", ""), q.get("fieldSelector", ""), rt.kind)
        except SelectorError as exc:
            raise _bad_request(str(exc)) from None
        if q.get("watch") in ("1", "true", "True"):
            return await self._watch(request, rt, kind, namespace, selector)
        snap = await self.meta.snapshot(kind, namespace)
        floor = await self.meta.compacted_revision()
        self._resumes.note(str(snap.revision), snap.revision, floor=floor)
        return _json(
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(snap.revision)},
                "items": [_typed(rt, obj) for obj in snap.items if selector(obj)],
            }
        )

    async def _watch(
        self,
        request: web.Request,
        rt: ResourceType,
        kind: str,
        namespace: str | None,
        selector: Selector,
    ) -> web.StreamResponse:
        q = request.query
        timeout = self._watch_timeout
        if q.get("timeoutSeconds"):
            try:
                seconds = int(q["timeoutSeconds"])
            except ValueError:
                seconds = -1
            if seconds < 0:
                raise _bad_request(f"invalid timeoutSeconds {q['timeoutSeconds']!r}")
            timeout = float(seconds) or timeout  # 0: the server's default, as Kubernetes
        rv = q.get("resourceVersion", "")
        initial: list[dict[str, Any]] = []
        if rv in ("", "0"):  # Kubernetes: the current state as ADDED events, then changes
            snap = await self.meta.snapshot(kind, namespace)
            after, initial = snap.revision, [o for o in snap.items if selector(o)]
        else:
            resumed = self._resumes.resolve(rv)
            if resumed is None or resumed < await self.meta.compacted_revision():
                return await self._expired(request, rv)
            after = resumed
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        changes = self.meta.watch(kind, namespace, after=after)
        deadline = asyncio.timeout(timeout)
        self._watches.add(deadline)
        try:
            async with deadline:
                for obj in initial:
                    await resp.write(self._line("ADDED", rt, obj, after))
                async for change in changes:
                    etype = _selected(change, selector)
                    if etype is not None:
                        await resp.write(self._line(etype, rt, change.object, change.revision))
        except (TimeoutError, ConnectionResetError, WatchOverflowError):
            pass  # the client re-watches from the last resourceVersion it saw
        except CompactedError as exc:
            with contextlib.suppress(Exception):
                await resp.write(_error_event(f"too old resource version: {exc}"))
        finally:
            self._watches.discard(deadline)
            with contextlib.suppress(Exception):
                await changes.aclose()
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp

    def _line(self, etype: str, rt: ResourceType, obj: dict[str, Any], revision: int) -> bytes:
        self._resumes.note((obj.get("metadata") or {}).get("resourceVersion"), revision)
        return orjson.dumps({"type": etype, "object": _typed(rt, obj)}) + b"\n"

    async def _expired(self, request: web.Request, rv: str) -> web.StreamResponse:
        # As kube-apiserver: a 200 stream holding one ERROR event; clients relist on it.
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(
            _error_event(
                f"too old resource version: {rv} is not a watch position this MetaServer "
                "knows (lists and watches use the node's local revisions); list again"
            )
        )
        await resp.write_eof()
        return resp

    # -- writes ----------------------------------------------------------------------------

    async def _write(self, request: web.Request) -> web.Response:
        what = f"{request.method} {request.path_qs}"
        if self._forward is None:
            raise _Refusal(405, "MethodNotAllowed", f"this MetaServer is read-only: {what}")
        if not self._connected():
            raise _Refusal(
                503, "ServiceUnavailable", f"the node is offline; writes need the cloud: {what}"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _Refusal(
                413, "RequestEntityTooLarge", f"request body over {MAX_BODY} bytes"
            ) from None
        try:
            async with asyncio.timeout(self._forward_timeout):
                status, answer = await self._forward(
                    request.method,
                    request.rel_url.raw_path,
                    request.query_string,
                    body,
                    content_type=request.headers.get("Content-Type", ""),
                )
        except TimeoutError:
            raise _Refusal(
                504,
                "Timeout",
                f"the cloud did not answer within {self._forward_timeout:g}s: {what}",
            ) from None
        except ConnectionError as exc:
            raise _Refusal(
                503,
                "ServiceUnavailable",
                f"the node is offline; writes need the cloud: {what} ({exc})",
            ) from None
        if not 200 <= status <= 599:
            raise _Refusal(502, "InternalError", f"the cloud answered {what} with status {status}")
        return web.Response(status=status, body=answer, content_type="application/json")


def _selected(change: Change, selector: Selector) -> str | None:
    """Kubernetes' semantics: an object entering the selection is ADDED, one leaving it
    DELETED."""
    if selector.empty:
        return change.type
    now = selector(change.object)
    if change.type != "MODIFIED" or change.previous is None:
        return change.type if now else None
    before = selector(change.previous)
    if now:
        return "MODIFIED" if before else "ADDED"
    return "DELETED" if before else None


def _typed(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """The object with the served kind and apiVersion (the cloud may have sent it without);
    a new top-level dict, as ``obj`` may be shared between watchers."""
    if obj.get("kind") == rt.kind and obj.get("apiVersion") == rt.api_version:
        return obj
    return {**obj, "apiVersion": rt.api_version, "kind": rt.kind}


def _error_event(message: str) -> bytes:
    status = _Refusal(410, "Expired", message).status()
    return orjson.dumps({"type": "ERROR", "object": status}) + b"\n"


def _version() -> dict[str, str]:
    return {
        "major": "1",
        "minor": "31",
        "gitVersion": "v1.31.0-orbiter-edge",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-11-26T00:00:00Z",
        "goVersion": f"python{platform.python_version()}",
        "compiler": "cpython",
        "platform": f"{platform.system().lower()}/{platform.machine()}",
    }
