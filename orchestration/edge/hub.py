"""EdgeHub: the edge end of the cloud-edge link (kubeedge.md §2.4, §2.6).

The edge always dials the cloud (wss, client certificate), says it is alive every
``heartbeat`` and redials after any error with exponential back-off and jitter. It keeps no
outbox: ``send`` raises ``NotConnected`` while offline and the caller keeps what must survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random as _random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from ..protocol import GROUP_RESOURCE, KEEPALIVE, MAX_FRAME, Message, MessageError

__all__ = [
    "DEFAULT_PROJECT_ID",
    "EdgeHub",
    "NotConnected",
    "backoff_delay",
    "events_url",
    "keepalive_message",
    "mtls_client_context",
]

log = logging.getLogger(__name__)

DEFAULT_PROJECT_ID = "e632aba927ea4ac2b575ec1603d56f10"  # KubeEdge's default

Handler = Callable[[Message], Awaitable[None]]
FrameHandler = Callable[[bytes], Awaitable[None]]
ConnectionCallback = Callable[[bool], Awaitable[None] | None]
SSLSource = ssl.SSLContext | Callable[[], ssl.SSLContext]


class NotConnected(ConnectionError):
    """The link to the cloud is down; keep the message and try again when it is up."""


def mtls_client_context(
    certfile: str | Path, keyfile: str | Path, cafile: str | Path
) -> ssl.SSLContext:
    """TLS >= 1.2 trusting only the cluster CA, presenting the node certificate."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    return ctx


def events_url(server: str, node_name: str, project_id: str = DEFAULT_PROJECT_ID) -> str:
    """KubeEdge's dial URL ``wss://<server>/<project>/<node>/events`` (any path is accepted)."""
    return f"wss://{server}/{project_id}/{node_name}/events"


def keepalive_message() -> Message:
    return Message(
        source="websocket",
        group=GROUP_RESOURCE,
        operation=KEEPALIVE,
        resource="node",
        content="ping",
    )


def backoff_delay(
    attempt: int, base: float, cap: float, random: Callable[[], float] = _random.random
) -> float:
    """Exponential back-off with "equal jitter": somewhere in [d/2, d], d = min(cap, base*2^n).

    Jitter keeps a thousand nodes that lost the cloud together from redialling together.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt, 62))
    return ceiling / 2 + ceiling / 2 * float(random())


class EdgeHub:
    def __init__(
        self,
        url: str,
        ssl_context: SSLSource,
        node_name: str,
        *,
        handler: Handler,
        project_id: str = DEFAULT_PROJECT_ID,
        heartbeat: float = 15.0,
        reconnect_backoff: tuple[float, float] = (1.0, 30.0),
        max_frame: int = MAX_FRAME,
        connect_timeout: float = 10.0,
        send_timeout: float = 10.0,
        random: Callable[[], float] = _random.random,
        frames: FrameHandler | None = None,
    ) -> None:
        self.url = url
        self.frames = frames  # store-and-forward envelopes: binary frames with a zero first byte
        self.node_name = node_name
        self._ssl = ssl_context
        self._handler = handler
        self._project_id = project_id
        self._heartbeat = heartbeat
        self._backoff = reconnect_backoff
        self._max_frame = max_frame
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._random = random
        self._callbacks: list[ConnectionCallback] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        self._connection: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._forced = False
        self._stopping = False
        self._established = False
        self._closed_here = False  # the link was closed by stop() or reconnect()
        self.retry_delays: deque[float] = deque(maxlen=32)  # recent back-offs, for diagnosis

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def on_connection(self, callback: ConnectionCallback) -> None:
        """``callback(True)`` once the link is up, ``callback(False)`` once it is lost."""
        self._callbacks.append(callback)

    async def send(self, message: Message | bytes) -> None:
        """Send a message (text frame) or an envelope (binary frame)."""
        ws = self._ws
        if ws is None or ws.closed:
            raise NotConnected("the cloud is not connected")
        try:
            async with self._send_lock, asyncio.timeout(self._send_timeout):
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message.encode().decode())
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            if not ws.closed:  # a closing link ends by itself; a stuck one is redialled
                self._drop_connection()
            raise NotConnected(f"send to the cloud failed: {exc!r}") from exc

    async def start(self) -> None:
        if self._runner is None:
            self._stopping = False
            self._runner = asyncio.create_task(self._run(), name=f"edgehub-{self.node_name}")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            self._stopping = True
            await self._close_link(b"edge hub stopping")  # a clean close, not a cut socket
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def __aenter__(self) -> EdgeHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def reconnect(self) -> None:
        """Close the link and redial at once, e.g. after a certificate rotation: the ssl
        context (or the callable that returns it) is asked again for the new dial. Returns
        once the old link is down; ``on_connection`` reports the new one."""
        self._forced = True
        conn = self._connection
        await self._close_link(b"reconnecting")
        if conn is not None and not conn.done():
            conn.cancel()  # still dialling (maybe with the old context)
        self._wake.set()

    async def _close_link(self, reason: bytes) -> None:
        """Close the WebSocket cleanly and let the link's task finish (callbacks included)."""
        ws, conn = self._ws, self._connection
        if ws is None or ws.closed or conn is None:
            return
        # From this task: aiohttp hands the close to the reading task, which then ends.
        self._closed_here = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._connect_timeout):
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=reason)
        await asyncio.wait({conn}, timeout=self._connect_timeout)

    # -- the dial loop -------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        try:
            while True:
                self._forced = self._established = False
                conn = self._connection = asyncio.create_task(self._connect_and_serve())
                await asyncio.wait({conn})  # its end is ours to judge, not to raise
                if not conn.cancelled() and (exc := conn.exception()) is not None:
                    log.error("the link to the cloud failed", exc_info=exc)
                if self._stopping:
                    return
                if self._forced:
                    failures = 0
                    continue
                if self._established:
                    failures = 0
                delay = backoff_delay(failures, *self._backoff, random=self._random)
                failures += 1
                self.retry_delays.append(delay)
                log.info("reconnecting to the cloud in %.2f s", delay)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)  # reconnect() cuts it short
        finally:
            last, self._connection = self._connection, None
            if last is not None and not last.done():
                last.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await last

    def _drop_connection(self) -> None:
        if self._connection is not None and not self._connection.done():
            self._connection.cancel()

    async def _connect_and_serve(self) -> None:
        """Dial once and serve until the link breaks."""
        ctx = self._ssl() if callable(self._ssl) else self._ssl
        headers = {"node_id": self.node_name, "project_id": self._project_id}
        try:
            async with aiohttp.ClientSession() as http:
                async with asyncio.timeout(self._connect_timeout):
                    ws = await http.ws_connect(
                        self.url,
                        ssl=ctx,
                        headers=headers,
                        max_msg_size=self._max_frame,
                        # WebSocket pings find a half-open link that writes alone would not.
                        heartbeat=self._heartbeat,
                        timeout=aiohttp.ClientWSTimeout(ws_close=self._connect_timeout),
                    )
                try:
                    await self._serve(ws)
                finally:
                    await self._disconnected(ws)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if self._established:
                log.warning("lost the link to the cloud: %r", exc)
            else:
                log.warning("cannot reach the cloud at %s: %r", self.url, exc)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._established = True
        self._closed_here = False
        log.info("connected to the cloud at %s as node %s", self.url, self.node_name)
        await self._notify(True)
        keepalive = asyncio.create_task(self._keepalive(ws))
        try:
            async for msg in ws:
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break  # ERROR: aiohttp has closed the link (e.g. a frame over max_frame)
                if (
                    msg.type is aiohttp.WSMsgType.BINARY
                    and self.frames is not None
                    and msg.data[:1] == b"\x00"
                ):
                    try:
                        await self.frames(msg.data)
                    except Exception:
                        log.exception("envelope handler failed")
                    continue
                try:
                    message = Message.decode(msg.data, max_size=self._max_frame)
                except MessageError as exc:
                    # The cloud resends what is not ACKed; a bad frame is not worth the link.
                    log.error("dropped a bad message from the cloud: %s", exc)
                    continue
                try:
                    await self._handler(message)
                except Exception:
                    log.exception("handler failed on %s %s", message.operation, message.resource)
            if not self._closed_here:
                log.warning("the cloud closed the link (code %s)", ws.close_code)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _disconnected(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = None
        with contextlib.suppress(Exception):
            await ws.close()
        await self._notify(False)

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            try:
                await self.send(keepalive_message())
            except NotConnected:
                return
            await asyncio.sleep(self._heartbeat)

    async def _notify(self, connected: bool) -> None:
        for callback in self._callbacks:
            try:
                result = callback(connected)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("connection callback %r failed", callback)
