"""``Cloud``: everything ``orbiter cloud`` runs, started and stopped as one.

The API server and its controllers; the join endpoint that signs node certificates; CloudHub,
holding one mTLS WebSocket per edge node; the edge controller that syncs each node; and the
router that carries KubeEdge's Rules between REST and the nodes' MQTT buses. Higher layers
add their own CRDs (``crds``: the sedna.io kinds) and controllers (``controllers``: the AI
global manager) without this layer knowing them, and handlers of the upstream messages their
edge extensions send (``upstream``: source name → factory of ``(node, message) -> reply``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ..apis import RULES as RULES_CRDS
from ..apis import load_crds
from ..apiserver import APIServer
from ..client import NODES, Client, LocalClient, NotFoundError
from ..protocol import BUILTIN_SOURCES, ERROR, GROUP_USER, RESPONSE, Message
from .controlling import ControllerFactory, ControllerManager, Informers
from .devicestatus import DeviceReports
from .edgecontrol import EdgeController
from .forwarding import WriteForwarding
from .hub import CloudHub, mtls_server_context
from .installing import install_crds
from .joining import DEFAULT_CERT_DAYS, JoinServer
from .nodereports import NodeReports
from .objectsyncs import ensure_crds
from .podlogs import PodLogStreams
from .router import DEFAULT_PORT as ROUTER_PORT
from .router import Router
from .sessions import ENVELOPED, NodeNotConnected
from .storeforward import NodeSync

__all__ = ["Cloud", "UpstreamFactory", "UpstreamHandler"]

log = logging.getLogger(__name__)

# Answers the node's message (the reply's parent_msg_id is its msg_id, which acknowledges the
# node's outbox row): ``message.response(...)``, or ``message.error(reason)`` for a refusal;
# None leaves it unanswered, so the node sends it again after its ack timeout.
UpstreamHandler = Callable[[str, Message], Awaitable[Message | None]]
# Built at each start with the cloud's client (which exists only from then on).
UpstreamFactory = Callable[[Client], UpstreamHandler]


class Cloud:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        store_url: str | None = None,
        listen: str = "127.0.0.1",
        port: int = 6443,
        hub_port: int = 10000,
        join_port: int = 10002,
        bookmark_interval: float = 60.0,
        encryption_key_file: str | os.PathLike[str] | None = None,
        keepalive_timeout: float = 30.0,
        sync_period: float = 5.0,
        node_cert_days: float = DEFAULT_CERT_DAYS,
        router_port: int = ROUTER_PORT,
        crds: Iterable[dict[str, Any]] = (),
        controllers: Iterable[ControllerFactory] = (),
        upstream: Mapping[str, UpstreamFactory] | None = None,
    ) -> None:
        """``crds``: more CustomResourceDefinitions to install (create or update) at every
        start, after the built-in ones. ``controllers``: factories of more controllers, run by
        the cloud's ``ControllerManager`` on its shared informers (their CRDs are installed
        before they start). ``upstream``: the messages whose source is a key go to the handler
        its factory builds (with the cloud's client) at start; the handler's reply is sent
        back to the node."""
        reserved = BUILTIN_SOURCES & set(upstream or {})
        if reserved:
            raise ValueError(f"upstream sources {sorted(reserved)} are the built-in modules'")
        self._upstream_factories = dict(upstream or {})
        self._upstream_handlers: dict[str, UpstreamHandler] = {}
        self.server = APIServer(
            data_dir,
            store_url=store_url,
            listen=listen,
            port=port,
            bookmark_interval=bookmark_interval,
            encryption_key_file=encryption_key_file,
        )
        self._listen = listen
        self._hub_port, self._join_port = hub_port, join_port
        self._keepalive_timeout, self._sync_period = keepalive_timeout, sync_period
        self._node_cert_days = node_cert_days
        self._router_port = router_port
        self._crds = list(crds)  # an iterator would be spent by the first start
        self._extra_controllers = list(controllers)
        self.router: Router | None = None
        self._router_informers: Informers | None = None
        self._client: LocalClient | None = None
        self._controllers: ControllerManager | None = None
        self.join: JoinServer | None = None
        self.hub: CloudHub | None = None
        self.sync: NodeSync | None = None
        self.edge: EdgeController | None = None
        self._reports: NodeReports | None = None
        self._devices: DeviceReports | None = None
        self._writes: WriteForwarding | None = None
        self.logs: PodLogStreams | None = None

    async def start(self) -> None:
        await self.server.start()
        try:
            client = self._client = LocalClient(self.server.api)
            await ensure_crds(client)
            # Before the controllers: their informers list these kinds as they start.
            await install_crds(client, load_crds(RULES_CRDS))
            await install_crds(client, self._crds)
            self._controllers = ControllerManager(client, extra=self._extra_controllers)
            await self._controllers.start()
            self.join = JoinServer(
                self.server.data_dir,
                listen=self._listen,
                port=self._join_port,
                is_connected=self._is_connected,
                node_exists=self._node_exists,
                cert_days=self._node_cert_days,
            )
            await self.join.start()  # also writes the hub's serving certificate
            data = self.server.data_dir
            self.hub = CloudHub(
                mtls_server_context(data / "cloudhub.crt", data / "cloudhub.key", data / "ca.crt"),
                handler=self._upstream,
                port=self._hub_port,
                host=self._listen,
                keepalive_timeout=self._keepalive_timeout,
            )
            self.sync = NodeSync(self.hub, data / "sync", self._upstream)
            self._reports = NodeReports(client)
            self._upstream_handlers = {
                source: factory(client) for source, factory in self._upstream_factories.items()
            }
            self._devices = DeviceReports(client)
            self._writes = WriteForwarding(self.server.api)
            self.logs = PodLogStreams(self.hub)
            self.hub.on_disconnect(self.logs.node_gone)
            self.server.api.pod_logs = self.logs.open
            self.edge = EdgeController(client, self.hub, sync_period=self._sync_period)
            await self.edge.start()
            self._router_informers = Informers(client)
            self.router = Router(
                client, self.hub, self._router_informers, host=self._listen, port=self._router_port
            )
            await self._router_informers.start()
            await self.router.start()
            await self.hub.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.logs is not None:
            self.server.api.pod_logs = None
            self.logs.close_all()
            self.logs = None
        if self.hub is not None:
            await self.hub.stop()
            self.hub = None
        if self.sync is not None:
            await self.sync.close()
            self.sync = None
        if self.router is not None:
            await self.router.stop()
            self.router = None
        if self._router_informers is not None:
            await self._router_informers.stop()
            self._router_informers = None
        if self.edge is not None:
            await self.edge.stop()
            self.edge = None
        if self.join is not None:
            await self.join.stop()
            self.join = None
        if self._controllers is not None:
            await self._controllers.stop()
            self._controllers = None
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self.server.stop()

    async def __aenter__(self) -> Cloud:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _is_connected(self, node: str) -> bool:
        return self.hub is not None and self.hub.is_connected(node)

    async def _node_exists(self, node: str) -> bool:
        assert self._client is not None
        try:
            await self._client.get(NODES, node)
        except NotFoundError:
            return False
        return True

    async def _upstream(self, node: str, message: Message) -> None:
        """Log replies go to their streams (before the edge controller, which would take a
        response for an ACK); messages from a source in ``upstream`` to its handler; writes
        forwarded by the node's MetaServer to WriteForwarding; device reports to DeviceReports;
        node reports to NodeReports; the rest to the edge controller."""
        if self.logs is not None and self.logs.handle(node, message):
            return
        handler = self._upstream_handlers.get(message.source)
        if handler is not None and message.operation not in (RESPONSE, ERROR):
            # Before the others: a registered source is never a built-in one.
            try:
                answer = await handler(node, message)
            except Exception:
                log.exception("the %s handler failed on %s", message.source, message.resource)
                answer = message.error("internal error", source=message.source)
            if answer is not None:
                await self._answer(node, answer)
            return
        if message.operation not in (RESPONSE, ERROR) and WriteForwarding.handles(message):
            assert self._writes is not None
            await self._answer(node, await self._writes.handle(node, message))
            return
        if message.group == GROUP_USER and message.operation not in (RESPONSE, ERROR):
            assert self.router is not None
            reply = await self.router.handle(node, message)
            if reply is not None:
                await self._answer(node, reply)
            return
        if message.operation not in (RESPONSE, ERROR) and DeviceReports.handles(message):
            assert self._devices is not None
            await self._answer(node, await self._devices.handle(node, message))
            return
        if message.operation in (RESPONSE, ERROR) or not NodeReports.handles(message):
            assert self.edge is not None
            await self.edge.handle(node, message)
            return
        assert self._reports is not None
        await self._answer(node, await self._reports.handle(node, message))

    async def _answer(self, node: str, reply: Message) -> None:
        """Send a handler's answer; an enveloped message's answer is its ACK instead."""
        if ENVELOPED.get():
            if reply.operation == ERROR:
                log.warning("node %s: refused %s: %s", node, reply.resource, reply.content)
            return
        assert self.hub is not None
        with contextlib.suppress(NodeNotConnected):
            await self.hub.send(node, reply)
