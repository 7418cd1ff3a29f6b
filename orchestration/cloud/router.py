"""The cloud router (kubeedge.md §7): KubeEdge's Rules between REST and a node's MQTT bus.

* rest → eventbus: ``POST /<node>/<namespace>/<path>`` on the router's port (9443) finds the
  Rule in ``namespace`` whose ``rest`` source matches ``path`` (``sourceResource.path``, whole
  segments) and whose target is an ``eventbus`` endpoint; the body goes to the node as a
  ``publish`` (group ``user``, resource ``node/<node>/<topic>[/<rest of the path>]``) and the
  node publishes it on its broker. 200 once handed to the node's session; 404 when no Rule
  matches, 503 when the node is not connected.
* eventbus → rest: a Rule whose source is an ``eventbus`` endpoint with ``sourceResource``
  ``{topic, node_name}`` makes that node subscribe to the topic (a ``subscribe`` message with
  the node's whole list of topics, sent on every change and whenever the node connects); what
  apps publish there comes back as ``upload`` and is POSTed to the target ``rest`` endpoint's
  ``targetResource.resource`` URL.

Every message counts in the Rule's ``status.successMessages`` / ``failMessages``, and the
last errors are kept in ``status.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
from aiohttp import web

from ..client import RULEENDPOINTS, RULES, Client, ClientError, ConflictError, NotFoundError
from ..protocol import GROUP_USER, UPLOAD, Message
from .controlling import Informers, meta
from .sessions import NodeNotConnected

__all__ = ["DEFAULT_PORT", "Router"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 9443
SOURCE = "router"
MAX_BODY = 4 << 20  # bytes a REST request may carry to a node (KubeEdge: 12 MB)
_KEPT_ERRORS = 10
_POST_TIMEOUT = 30.0


class Router:
    """``hub``: CloudHub (send, on_connect). Give it the nodes' upstream ``user`` messages
    through ``handle``. ``informers``: shared with the other controllers."""

    def __init__(
        self,
        client: Client,
        hub: Any,
        informers: Informers,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
    ) -> None:
        self.client = client
        self.hub = hub
        self.host = host
        self.requested_port = port
        self.port = 0
        self.rules = informers(RULES)
        self.endpoints = informers(RULEENDPOINTS)
        self.rules.on_event(self._on_rule)
        hub.on_connect(self._connected)
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._counting = asyncio.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_POST_TIMEOUT))
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{node}/{namespace}/{path:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("router listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- rest -> eventbus ----------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        node, namespace = request.match_info["node"], request.match_info["namespace"]
        path = "/" + request.match_info["path"]
        if request.method != "POST":
            return _answer(405, f"{request.method}: the router takes POST")
        found = self._rest_rule(namespace, path)
        if found is None:
            return _answer(404, f"no rule in namespace {namespace} takes REST path {path}")
        rule, topic = found
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            await self._count(rule, ok=False, error=f"a request over {MAX_BODY} bytes")
            return _answer(413, f"the body is over {MAX_BODY} bytes")
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return _answer(400, "the body must be UTF-8 text")
        message = Message(SOURCE, GROUP_USER, "publish", f"node/{node}/{topic}", text)
        try:
            await self.hub.send(node, message)
        except (NodeNotConnected, ConnectionError) as exc:
            await self._count(rule, ok=False, error=f"node {node}: {exc}")
            return _answer(503, f"node {node} is not connected")
        await self._count(rule, ok=True)
        return _answer(200, f"published on {topic} at node {node}")

    def _rest_rule(self, namespace: str, path: str) -> tuple[dict[str, Any], str] | None:
        for rule in self.rules.items():
            if meta(rule).get("namespace") != namespace:
                continue
            spec = rule.get("spec") or {}
            if self._type(namespace, spec.get("source")) != "rest":
                continue
            if self._type(namespace, spec.get("target")) != "eventbus":
                continue
            prefix = "/" + str((spec.get("sourceResource") or {}).get("path", "")).strip("/")
            topic = str((spec.get("targetResource") or {}).get("topic", "")).strip("/")
            if not topic:
                continue
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                rest = path[len(prefix) :].strip("/")
                return rule, f"{topic}/{rest}" if rest else topic
        return None

    def _type(self, namespace: str, endpoint: Any) -> str | None:
        obj = self.endpoints.get(str(endpoint or ""), namespace)
        return None if obj is None else (obj.get("spec") or {}).get("ruleEndpointType")

    # -- eventbus -> rest ----------------------------------------------------------------

    def _subscriptions(self, node: str) -> list[str]:
        topics = []
        for rule in self.rules.items():
            spec = rule.get("spec") or {}
            source = spec.get("sourceResource") or {}
            ns = meta(rule).get("namespace") or ""
            if source.get("node_name") == node and self._type(ns, spec.get("source")) == "eventbus":
                topic = str(source.get("topic") or "")
                if topic:
                    topics.append(topic)
        return topics

    async def _connected(self, node: str) -> None:
        await self._tell(node)

    async def _on_rule(self, etype: str, rule: dict[str, Any], old: dict[str, Any] | None) -> None:
        nodes = {
            str((((r or {}).get("spec") or {}).get("sourceResource") or {}).get("node_name") or "")
            for r in (rule, old)
        }
        for node in nodes - {""}:
            await self._tell(node)

    async def _tell(self, node: str) -> None:
        """The node's whole set of topics to forward: idempotent, so sent again freely."""
        topics = sorted(set(self._subscriptions(node)))
        message = Message(SOURCE, GROUP_USER, "subscribe", f"node/{node}/subscriptions", topics)
        with contextlib.suppress(NodeNotConnected, ConnectionError):
            await self.hub.send(node, message)  # if not connected: sent when it connects

    async def handle(self, node: str, message: Message) -> Message | None:
        """An upstream ``user`` message: an ``upload`` from a subscribed topic."""
        if message.operation != UPLOAD:
            return None
        topic = message.resource
        body = message.content if isinstance(message.content, str) else ""
        targets = self._rest_targets(node, topic)
        if not targets:
            # Nodes send up KubeEdge's upload topics whatever the Rules say: not an error.
            return message.response(f"no rule takes topic {topic} from node {node}", source=SOURCE)
        task = asyncio.create_task(self._post_all(targets, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return message.response("OK", source=SOURCE)

    def _rest_targets(self, node: str, topic: str) -> list[tuple[dict[str, Any], str]]:
        found = []
        for rule in self.rules.items():
            spec = rule.get("spec") or {}
            source = spec.get("sourceResource") or {}
            ns = meta(rule).get("namespace") or ""
            if source.get("node_name") != node or source.get("topic") != topic:
                continue
            if self._type(ns, spec.get("source")) != "eventbus":
                continue
            if self._type(ns, spec.get("target")) != "rest":
                continue
            url = str((spec.get("targetResource") or {}).get("resource") or "")
            if url:
                found.append((rule, url))
        return found

    async def _post_all(self, targets: list[tuple[dict[str, Any], str]], body: str) -> None:
        assert self._http is not None
        for rule, url in targets:
            try:
                async with self._http.post(url, data=body.encode()) as response:
                    ok = response.status < 300
                    error = None if ok else f"POST {url}: HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                ok, error = False, f"POST {url}: {exc!r}"
            await self._count(rule, ok=ok, error=error)

    # -- status --------------------------------------------------------------------------

    async def _count(self, rule: dict[str, Any], *, ok: bool, error: str | None = None) -> None:
        m = meta(rule)
        name, namespace = str(m.get("name")), m.get("namespace")
        async with self._counting:  # one writer: the counters are read, added to, written
            for _ in range(10):
                try:
                    current = await self.client.get(RULES, name, namespace)
                except NotFoundError:
                    return
                status = dict(current.get("status") or {})
                field = "successMessages" if ok else "failMessages"
                status[field] = int(status.get(field) or 0) + 1
                if error:
                    status["errors"] = [*(status.get("errors") or []), error][-_KEPT_ERRORS:]
                body = {"metadata": {"resourceVersion": meta(current)["resourceVersion"]}}
                body["status"] = status
                try:
                    await self.client.patch(
                        RULES, name, body, namespace, patch_type="merge", subresource="status"
                    )
                    return
                except ConflictError:
                    continue
                except ClientError as exc:
                    log.warning("rule %s/%s: status not written: %s", namespace, name, exc)
                    return


def _answer(status: int, text: str) -> web.Response:
    return web.json_response({"code": status, "message": text}, status=status)
