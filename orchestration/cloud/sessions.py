"""One edge node's WebSocket session inside CloudHub: reading, checking and writing frames.

A session costs one aiohttp handler task and its socket: no thread, no extra task. Anything
that breaks the protocol ends only this session, with a logged reason naming the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from ..protocol import (
    DELETE,
    ERROR,
    GROUP_META,
    GROUP_RESOURCE,
    GROUP_TWIN,
    GROUP_USER,
    INSERT,
    KEEPALIVE,
    PATCH,
    QUERY,
    RESPONSE,
    UPDATE,
    UPLOAD,
    Message,
    MessageError,
)

log = logging.getLogger("orbiter.orchestration.cloud.hub")

Handler = Callable[[str, Message], Awaitable[None]]
FrameHandler = Callable[[str, bytes], Awaitable[None]]

# Set while an enveloped (store-and-forward) message is applied: its answer is the envelope's
# ACK, so handlers send no text reply (a slow uplink should not carry them).
ENVELOPED: contextvars.ContextVar[bool] = contextvars.ContextVar("enveloped", default=False)

# What an edge may send upstream, per group (kubeedge.md §2.3, §2.8). Anything else is a
# protocol violation: a peer that speaks another dialect should be told, not half-served.
UPSTREAM_OPERATIONS: Mapping[str, frozenset[str]] = {
    GROUP_RESOURCE: frozenset(
        {INSERT, UPDATE, PATCH, DELETE, QUERY, RESPONSE, ERROR, KEEPALIVE, UPLOAD}
    ),
    GROUP_TWIN: frozenset({INSERT, UPDATE, DELETE, QUERY, "get", RESPONSE, ERROR, UPLOAD}),
    GROUP_USER: frozenset({UPLOAD, RESPONSE, ERROR}),
    GROUP_META: frozenset({QUERY, RESPONSE, ERROR}),
}

_REASON_BYTES = 123  # the most a WebSocket close frame may carry
_LINGER = 0.5  # how long a misbehaving or silent peer may take to answer our close


class NodeNotConnected(ConnectionError):
    """The node has no session on this hub (or it ended while sending)."""


class Session:
    """A connected node; ``done`` is set once it has ended and been unregistered."""

    __slots__ = (
        "_closing",
        "_send_lock",
        "_transport",
        "done",
        "node",
        "peer_certificate",
        "project_id",
        "ws",
    )

    def __init__(
        self,
        node: str,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        *,
        project_id: str,
        peer_certificate: dict[str, Any],
    ) -> None:
        self.node = node
        self.ws = ws
        self._transport = transport
        self.project_id = project_id
        self.peer_certificate = peer_certificate
        self.done = asyncio.Event()
        self._send_lock = asyncio.Lock()  # one writer at a time keeps frames whole and ordered
        self._closing = False

    async def send(self, message: Message | bytes, deadline: float) -> None:
        """Write one frame (a message as text, store-and-forward envelopes as binary); a peer
        that cannot take it within ``deadline`` s is dropped."""
        if self._closing or self.ws.closed:
            raise NodeNotConnected(f"node {self.node} is not connected")
        try:
            async with self._send_lock, asyncio.timeout(deadline):
                if isinstance(message, bytes):
                    await self.ws.send_bytes(message)
                else:
                    await self.ws.send_str(message.encode().decode())
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            # A peer that cannot take a frame within the timeout is as good as gone.
            await self.close(f"send failed: {exc!r}", linger=_LINGER)
            raise NodeNotConnected(f"node {self.node}: send failed ({exc!r})") from exc

    async def close(
        self, reason: str, code: int = WSCloseCode.GOING_AWAY, *, linger: float | None = None
    ) -> None:
        """Close with a logged reason; the reading loop then ends on its own.

        ``linger`` bounds the wait for the peer's close frame (else the ws close timeout):
        a peer that broke the protocol or fell silent gets no more than a moment.
        """
        if self._closing:
            return
        self._closing = True
        log.warning("closing the session of node %s: %s", self.node, reason)
        message = reason.encode()[:_REASON_BYTES]
        # Already gone, or too slow to answer: aiohttp then drops the socket.
        with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
            async with asyncio.timeout(linger):
                await self.ws.close(code=code, message=message)

    def abort(self) -> None:
        """Cut the socket of a peer that ignores the close handshake."""
        if self._transport is not None:
            self._transport.abort()

    async def serve(
        self,
        handler: Handler,
        *,
        keepalive_timeout: float,
        max_frame: int,
        allowed: Mapping[str, frozenset[str]],
        frames: FrameHandler | None = None,
    ) -> None:
        """Read frames until the peer leaves, falls silent or breaks the protocol.

        A binary frame starting with a zero byte is a store-and-forward envelope (its length
        prefix; a JSON message starts with ``{``) and goes to ``frames``."""
        ws = self.ws
        while not self._closing:
            try:
                # Only data frames return from receive(): WebSocket pings do not count as
                # keepalives, the application-level keepalive message does (as in KubeEdge).
                async with asyncio.timeout(keepalive_timeout):
                    msg = await ws.receive()
            except TimeoutError:
                await self.close(f"no keepalive for {keepalive_timeout:g} s", linger=_LINGER)
                return
            if msg.type is WSMsgType.BINARY and frames is not None and msg.data[:1] == b"\x00":
                try:
                    await frames(self.node, msg.data)
                except Exception:
                    log.exception("envelope handler failed on a frame from node %s", self.node)
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                message = await self._check(msg.data, max_frame, allowed)
                if message is None:
                    return
                if message.operation == KEEPALIVE:
                    continue  # it has reset the timer; nothing for the handler
                try:
                    await handler(self.node, message)
                except Exception:
                    log.exception("handler failed on a message from node %s", self.node)
            elif msg.type is WSMsgType.ERROR:
                # aiohttp has closed already (e.g. 1009 for a frame over max_msg_size).
                self._closing = True
                exc = msg.data
                if isinstance(exc, WebSocketError) and exc.code == WSCloseCode.MESSAGE_TOO_BIG:
                    reason = f"frame over the {max_frame}-byte cap ({exc})"
                else:
                    reason = f"protocol error: {exc!r}"
                log.warning("closing the session of node %s: %s", self.node, reason)
                return
            else:  # CLOSE, CLOSING, CLOSED: the peer or we are done
                if not self._closing:
                    log.info("node %s closed its session (code %s)", self.node, ws.close_code)
                return

    async def _check(
        self, data: str | bytes, max_frame: int, allowed: Mapping[str, frozenset[str]]
    ) -> Message | None:
        try:
            message = Message.decode(data, max_size=max_frame)
        except MessageError as exc:
            await self.close(f"bad message: {exc}", WSCloseCode.POLICY_VIOLATION, linger=_LINGER)
            return None
        operations = allowed.get(message.group)
        if operations is None or message.operation not in operations:
            await self.close(
                f"out-of-protocol message: operation {message.operation!r} "
                f"is not allowed in group {message.group!r}",
                WSCloseCode.POLICY_VIOLATION,
                linger=_LINGER,
            )
            return None
        return message
