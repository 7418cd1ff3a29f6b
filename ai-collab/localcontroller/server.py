"""The local controller's HTTP server and what it does with a worker's report.

``POST /sedna/workers/{name}/info`` with Sedna's worker message (reference ``sedna.md``
§1.2): ``name`` (must equal the path's), ``namespace``, ``ownerName``, ``ownerKind``
(required strings), ``ownerInfo`` (an object), ``kind``, ``status`` (strings) and ``results``
(a list). The answer is ``{"Status", "Message"}`` with 200, or 400 saying what is wrong (413
for a body over :data:`MAX_BODY`).

Each accepted report replaces its worker's previous one in the node's SQLite store. For
``jointinferenceservice`` the counters of every worker of that service on this node are summed
(``uploadCloudRatio`` averaged, weighted by ``inferenceNumber``) and the summary goes upstream
through the node's durable outbox (:mod:`.messages`). Reports of other owner kinds are stored
and acknowledged only: their managers come later. On start the LC reports its own URL too
(:data:`.messages.LC_KEY`), which the GM gives this node's workers as ``LC_SERVER``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web
from orbiter.orchestration.edge.extensions import EdgeContext, EdgeExtensionFactory
from orbiter.orchestration.protocol import listening_socket

from .messages import JOINT_INFERENCE, LC_KEY, LC_KIND, SOURCE, report_key
from .store import ReportStore

__all__ = [
    "DEFAULT_PORT",
    "MAX_BODY",
    "LocalController",
    "joint_inference_summary",
    "local_controller",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 9100  # Sedna's BIND_PORT
MAX_BODY = 1024 * 1024  # a report is a few hundred bytes; anything near this is a mistake
_MAX_NAME = 253  # a Kubernetes object name
COUNTERS = ("inferenceNumber", "hardExampleNumber", "cloudCallNumber", "fallbackNumber")
RATIO = "uploadCloudRatio"


class _BadReport(Exception):
    pass


def local_controller(*, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> EdgeExtensionFactory:
    """The factory ``EdgeCore(extensions=[...])`` takes (``port`` 0 picks a free one)."""
    return functools.partial(LocalController, host=host, port=port)


class LocalController:
    """One node's LC: an EdgeCore extension. ``port`` is the bound port once started."""

    def __init__(
        self, context: EdgeContext, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT
    ) -> None:
        self.context = context
        self.host = host
        self.requested_port = port
        self.port = port
        self.store: ReportStore | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self.store = ReportStore(self.context.data_dir / "localcontroller.db")
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/sedna/workers/{name}/info", self._info)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
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
            self.store.close()
            self.store = None
            raise
        self._runner = runner
        log.info("node %s: local controller at %s", self.context.node_name, self.url)
        # Durable (the outbox keeps the latest per key): with a free port, the GM can only
        # point this node's workers here (LC_SERVER) if it is told where "here" is.
        # Workers share the node's network: a wildcard bind is reached on the loopback.
        url = f"http://127.0.0.1:{self.port}" if self.host in ("", "0.0.0.0") else self.url
        self.context.report(LC_KEY, SOURCE, {"kind": LC_KIND, "url": url})

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        store, self.store = self.store, None
        if store is not None:
            store.close()

    # -- the HTTP API ---------------------------------------------------------------------

    async def _info(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _answer(413, f"the body is over {MAX_BODY} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _answer(400, "the body is not JSON")
        try:
            self.accept(request.match_info["name"], body)
        except _BadReport as exc:
            return _answer(400, str(exc))
        return _answer(200, "OK")

    def accept(self, worker: str, body: Any) -> None:
        """Validate, store and (for joint inference) report upstream one worker message."""
        if not isinstance(body, dict):
            raise _BadReport("the body must be a JSON object")
        if body.get("name") != worker:
            raise _BadReport(f"name {body.get('name')!r} is not the path's worker {worker!r}")
        namespace, owner_name, owner_kind = (
            _name(body, field) for field in ("namespace", "ownerName", "ownerKind")
        )
        owner_kind = owner_kind.lower()
        if not isinstance(body.get("ownerInfo", {}), dict):
            raise _BadReport("ownerInfo must be an object")
        for field in ("kind", "status"):
            if not isinstance(body.get(field, ""), str):
                raise _BadReport(f"{field} must be a string")
        if not isinstance(body.get("results", []), list):
            raise _BadReport("results must be a list")
        if owner_kind == JOINT_INFERENCE:
            _check_counters(body.get("ownerInfo") or {})
        store = self.store
        if store is None:
            raise _BadReport("the local controller is stopping")
        store.put(owner_kind, namespace, owner_name, worker, body)
        if owner_kind == JOINT_INFERENCE:
            reports = store.owner(owner_kind, namespace, owner_name)
            summary = joint_inference_summary(r.get("ownerInfo") or {} for r in reports.values())
            content = {
                "ownerKind": owner_kind,
                "namespace": namespace,
                "ownerName": owner_name,
                "ownerInfo": summary,
                "workers": len(reports),
            }
            self.context.report(report_key(owner_kind, namespace, owner_name), SOURCE, content)


def joint_inference_summary(infos: Iterable[Any]) -> dict[str, Any]:
    """The node's total over its workers' ``ownerInfo`` objects: counters summed,
    ``uploadCloudRatio`` weighted by ``inferenceNumber``, earliest ``startTime`` and latest
    ``updateTime`` (RFC 3339 strings in UTC compare as text)."""
    infos = [i for i in infos if isinstance(i, Mapping)]  # checked by the LC as it took them
    total: dict[str, Any] = {c: 0 for c in COUNTERS}
    weighted = 0.0
    for info in infos:
        for counter in COUNTERS:
            total[counter] += info.get(counter) or 0
        weighted += float(info.get(RATIO) or 0) * float(info.get("inferenceNumber") or 0)
    if len(infos) == 1:
        total[RATIO] = infos[0].get(RATIO) or 0  # exactly what the one worker said
    else:
        inferences = total["inferenceNumber"]
        total[RATIO] = weighted / inferences if inferences else 0.0
    starts = [i["startTime"] for i in infos if isinstance(i.get("startTime"), str)]
    updates = [i["updateTime"] for i in infos if isinstance(i.get("updateTime"), str)]
    if starts:
        total["startTime"] = min(starts)
    if updates:
        total["updateTime"] = max(updates)
    return total


def _name(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise _BadReport(f"{field} is required (a non-empty string)")
    if len(value) > _MAX_NAME or "/" in value:
        raise _BadReport(f"{field} {value[:64]!r} is not a valid name")
    return value


def _check_counters(info: Mapping[str, Any]) -> None:
    for field in (*COUNTERS, RATIO):
        value = info.get(field)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise _BadReport(f"ownerInfo.{field} must be a non-negative number")


def _answer(code: int, message: str) -> web.Response:
    status = "Success" if code == 200 else "Failure"
    return web.json_response({"Status": status, "Message": message}, status=code)
