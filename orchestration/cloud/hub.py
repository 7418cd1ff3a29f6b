"""CloudHub: the cloud end of the cloud-edge link (kubeedge.md §2.4-2.6).

An aiohttp WebSocket server over mutual TLS. Each edge node dials in with a client
certificate ``CN=system:node:<name>`` issued by the cluster CA and the headers ``node_id`` and
``project_id``; each frame is one JSON ``Message``. The hub is a thin adapter: upstream
messages go to ``handler(node, message)``, downstream ones leave through ``send(node, msg)``.
Queues, ACKs and retries live in ``delivery``, not here.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from ..protocol import MAX_FRAME, Message, listening_socket
from .sessions import (
    UPSTREAM_OPERATIONS,
    FrameHandler,
    Handler,
    NodeNotConnected,
    Session,
    log,
)

__all__ = [
    "UPSTREAM_OPERATIONS",
    "CloudHub",
    "NodeNotConnected",
    "mtls_server_context",
    "node_name_from_certificate",
]

NODE_CN_PREFIX = "system:node:"

NodeCallback = Callable[[str], Awaitable[None] | None]


def mtls_server_context(
    certfile: str | Path, keyfile: str | Path, cafile: str | Path
) -> ssl.SSLContext:
    """TLS >= 1.2 that demands a client certificate signed by the cluster CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def node_name_from_certificate(peercert: Mapping[str, Any] | None) -> str | None:
    """``<name>`` from a verified peer certificate ``CN=system:node:<name>``, else None."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                name = value.removeprefix(NODE_CN_PREFIX)
                return name if value.startswith(NODE_CN_PREFIX) and name else None
    return None


class CloudHub:
    """One WebSocket session per edge node; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        handler: Handler,
        port: int = 10000,
        host: str = "127.0.0.1",
        keepalive_timeout: float = 30.0,
        max_frame: int = MAX_FRAME,
        node_limit: int = 1000,
        send_timeout: float = 10.0,
        close_timeout: float = 5.0,
        allowed_operations: Mapping[str, frozenset[str]] = UPSTREAM_OPERATIONS,
        frames: FrameHandler | None = None,
    ) -> None:
        if ssl_context.verify_mode != ssl.CERT_REQUIRED:
            # Nodes are identified by their certificates: an optional one is no identity.
            raise ValueError("CloudHub needs an ssl context with verify_mode=CERT_REQUIRED")
        self._ssl = ssl_context
        self._handler = handler
        self._requested_port = port
        self._host = host
        self._keepalive_timeout = keepalive_timeout
        self._max_frame = max_frame
        self._node_limit = node_limit
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._allowed = allowed_operations
        self.frames = frames  # store-and-forward envelopes (binary frames), if anyone takes them
        self._sessions: dict[str, Session] = {}
        self._on_connect: list[NodeCallback] = []
        self._on_disconnect: list[NodeCallback] = []
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.port = 0

    # -- public API --------------------------------------------------------------------

    @property
    def sessions(self) -> frozenset[str]:
        """Names of the nodes connected right now."""
        return frozenset(self._sessions)

    def is_connected(self, node: str) -> bool:
        return node in self._sessions

    def peer_certificate(self, node: str) -> dict[str, Any] | None:
        """The verified client certificate of the node's current session (``getpeercert``)."""
        session = self._sessions.get(node)
        return session.peer_certificate if session else None

    def on_connect(self, callback: NodeCallback) -> None:
        self._on_connect.append(callback)

    def on_disconnect(self, callback: NodeCallback) -> None:
        self._on_disconnect.append(callback)

    async def send(self, node: str, message: Message | bytes) -> None:
        """Write one message (or envelope frame) to the node; ``NodeNotConnected`` if it has
        no session."""
        session = self._sessions.get(node)
        if session is None:
            raise NodeNotConnected(f"node {node} is not connected")
        await session.send(message, self._send_timeout)

    async def disconnect(self, node: str, reason: str) -> None:
        """End a node's session (e.g. the Node object was deleted)."""
        session = self._sessions.get(node)
        if session is not None:
            await session.close(reason)
            await self._wait_ended(session)

    async def start(self) -> None:
        self._stopping = False
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._serve)  # KubeEdge accepts any path
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._close_timeout)
        await self._runner.setup()
        try:
            sock = listening_socket(self._host, self._requested_port, backlog=1024)
            self.port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock, ssl_context=self._ssl).start()
        except BaseException:
            await self.stop()
            raise
        log.info("CloudHub listening on wss://%s:%d", self._host, self.port)

    async def stop(self) -> None:
        self._stopping = True
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.close("cloudhub is stopping") for s in sessions))
        await asyncio.gather(*(self._wait_ended(s) for s in sessions))
        if self._runner is not None:
            server = self._runner.server
            transports = [
                h.transport for h in (server.connections if server else []) if h.transport
            ]
            await self._runner.cleanup()
            # A TLS close may wait for the peer's close_notify; a stopped hub holds no sockets.
            for transport in transports:
                transport.abort()
            self._runner = None

    async def __aenter__(self) -> CloudHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- serving ---------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        peer = request.remote or "?"
        node, refusal = self._authenticate(request)
        if refusal is not None:
            log.warning("refused a connection from %s: %s", peer, refusal)
            return web.Response(status=403, text=refusal + "\n")
        assert node is not None
        if self._stopping:
            return web.Response(status=503, text="cloudhub is stopping\n")
        if node not in self._sessions and len(self._sessions) >= self._node_limit:
            log.warning(
                "refused node %s from %s: node limit %d reached", node, peer, self._node_limit
            )
            return web.Response(status=503, text=f"node limit {self._node_limit} reached\n")

        ws = web.WebSocketResponse(
            max_msg_size=self._max_frame,
            compress=False,  # a deflate context per session costs ~300 KiB; nodes are many
            timeout=self._close_timeout,
        )
        await ws.prepare(request)
        session = Session(
            node,
            ws,
            request.transport,
            project_id=request.headers.get("project_id", ""),
            peer_certificate=request.get_extra_info("peercert") or {},
        )
        # One session per node: the newcomer wins. The old one ends (and is reported
        # disconnected) before the new one is reported connected.
        while (old := self._sessions.get(node)) is not None:
            await old.close("replaced by a new session of the same node")
            await self._wait_ended(old)
        if self._stopping:  # stop() began while this one was being admitted
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"cloudhub is stopping")
            return ws
        self._sessions[node] = session
        log.info("node %s connected from %s", node, peer)
        try:
            await self._notify(self._on_connect, node)
            await session.serve(
                self._handler,
                keepalive_timeout=self._keepalive_timeout,
                max_frame=self._max_frame,
                allowed=self._allowed,
                frames=self.frames,
            )
        finally:
            if not ws.closed:
                await session.close("session ended")
            if self._sessions.get(node) is session:
                del self._sessions[node]
            log.info("node %s disconnected", node)
            try:
                await self._notify(self._on_disconnect, node)
            finally:
                session.done.set()
        return ws

    def _authenticate(self, request: web.Request) -> tuple[str | None, str | None]:
        """(node, None) for a node whose certificate matches its header, else (None, reason)."""
        header = request.headers.get("node_id", "")
        if not header:
            return None, "missing node_id header"
        cert_node = node_name_from_certificate(request.get_extra_info("peercert"))
        if cert_node is None:
            return None, (
                f"node_id {header!r}: client certificate is not a node certificate "
                f"(CN {NODE_CN_PREFIX}<name>)"
            )
        if cert_node != header:
            return None, (
                f"node_id header {header!r} does not match the certificate's node {cert_node!r}"
            )
        return cert_node, None

    async def _wait_ended(self, session: Session) -> None:
        for attempt in range(2):
            try:
                async with asyncio.timeout(self._close_timeout * 2):
                    await session.done.wait()
                return
            except TimeoutError:
                if attempt == 0:
                    session.abort()  # a peer that ignores the close handshake
        # Still not done: its handler is stuck in user code. Go on without it (it will not
        # unregister a session that is no longer its own, but reports its end late).
        log.error("the session of node %s did not end; continuing without it", session.node)
        if self._sessions.get(session.node) is session:
            del self._sessions[session.node]

    async def _notify(self, callbacks: list[NodeCallback], node: str) -> None:
        for callback in callbacks:
            try:
                result = callback(node)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("connection callback %r failed for node %s", callback, node)
