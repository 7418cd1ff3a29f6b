"""A real TCP proxy that behaves like a satellite pass, so the production hubs can be tested.

The edge hub (the satellite) dials this proxy instead of the cloud hub (the ground). The proxy
applies the same ``PassLink`` rules as the simulator: no link outside a window or during a
stall (new connections are accepted and closed at once, so the hub's redial back-off is what
gets exercised), each direction shaped to the pass's delivered-bytes curve and delayed by the
propagation time, and every connection cut at the window's end or abort the way a dropped radio
link cuts it: no FIN, a reset. It is a plain byte pipe, so TLS passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from orbiter.satellite.contacts import Contact, ContactPlan
from orbiter.satellite.link import DIRECTIONS, Direction, LinkModel, PassLink

__all__ = ["ContactProxy", "PassStats"]

_HOLD_LIMIT = 256 * 1024  # bytes one direction may hold before reading from its source pauses
_READ_SIZE = 64 * 1024


@dataclass(slots=True)
class PassStats:
    """What the proxy did during one pass (keyed by contact start; ``None`` = no contact)."""

    down: int = 0
    up: int = 0
    accepted: int = 0
    refused: int = 0
    cut: int = 0


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset, not a FIN: zero linger makes the kernel drop unsent data and RST."""
    transport = writer.transport
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Flow:
    """One direction of one proxied connection: source reader, waiting bytes, bytes on the
    air (delayed by propagation), destination writer."""

    def __init__(
        self,
        conn: _Connection,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.reader = reader
        self.writer = writer
        self.waiting = bytearray()
        self.on_air: deque[tuple[float, bytes]] = deque()
        self.on_air_bytes = 0
        self.eof = False
        self.space = asyncio.Event()
        self.space.set()

    def held(self) -> int:
        return len(self.waiting) + self.on_air_bytes + self.writer.transport.get_write_buffer_size()

    def update_space(self) -> None:
        if self.held() < _HOLD_LIMIT:
            self.space.set()
        else:
            self.space.clear()

    async def pump(self) -> None:
        """Read from the source while there is room; the proxy's ticker forwards."""
        try:
            while True:
                await self.space.wait()
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    self.eof = True
                    self.conn.maybe_finish()
                    return
                self.waiting += data
                self.update_space()
        except (ConnectionError, OSError):
            # An end hung up hard: pass the reset on, but it is no cut by the link.
            self.conn.proxy.cut(self.conn, by_link=False)

    def send(self, n: int, due: float) -> None:
        chunk = bytes(self.waiting[:n])
        del self.waiting[:n]
        self.on_air.append((due, chunk))
        self.on_air_bytes += n
        asyncio.get_running_loop().call_at(due, self.land)

    def land(self) -> None:
        """Deliver what has finished propagating, in order."""
        if self.conn.closed:
            return
        now = asyncio.get_running_loop().time()
        while self.on_air and self.on_air[0][0] <= now:
            _, chunk = self.on_air.popleft()
            self.on_air_bytes -= len(chunk)
            self.writer.write(chunk)
            stats = self.conn.stats
            if self.direction == "down":
                stats.down += len(chunk)
            else:
                stats.up += len(chunk)
        self.update_space()
        self.conn.maybe_finish()

    def drained(self) -> bool:
        return self.eof and not self.waiting and not self.on_air


class _Connection:
    def __init__(
        self,
        proxy: ContactProxy,
        link: PassLink,
        stats: PassStats,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.link = link
        self.stats = stats
        self.client_writer = client[1]
        self.server_writer = server[1]
        self.down = _Flow(self, "down", client[0], server[1])
        self.up = _Flow(self, "up", server[0], client[1])
        self.closed = False
        self.tasks = [
            asyncio.create_task(self.down.pump(), name="proxy-down"),
            asyncio.create_task(self.up.pump(), name="proxy-up"),
        ]
        self._half_closed: set[Direction] = set()

    def maybe_finish(self) -> None:
        """Pass a drained EOF on as a half-close; close once both directions have ended."""
        for flow in (self.down, self.up):
            if flow.drained() and flow.direction not in self._half_closed:
                self._half_closed.add(flow.direction)
                if flow.writer.can_write_eof() and not flow.writer.transport.is_closing():
                    with contextlib.suppress(OSError, RuntimeError):
                        flow.writer.write_eof()
        if len(self._half_closed) == 2 and not self.closed:
            self.closed = True
            self.client_writer.close()
            self.server_writer.close()
            self.proxy.forget(self)

    def abort(self) -> None:
        self.closed = True
        # Bytes the kernel never took are lost with the reset: take them off the stats.
        for flow in (self.down, self.up):
            unsent = flow.writer.transport.get_write_buffer_size()
            if flow.direction == "down":
                self.stats.down -= unsent
            else:
                self.stats.up -= unsent
        _abort(self.client_writer)
        _abort(self.server_writer)
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()


class ContactProxy:
    """``async with ContactProxy(("ground", 443), plan, "sat-0", LinkModel(...)) as p:`` and
    point the satellite's hub at ``127.0.0.1:p.port``. Plan times are on ``clock``."""

    def __init__(
        self,
        target: tuple[str, int],
        plan: ContactPlan,
        satellite: str,
        model: LinkModel,
        *,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
        tick: float = 0.02,
    ) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        self.target = target
        self.plan = plan
        self.satellite = satellite
        self.model = model
        self.clock = clock
        self.host = host
        self.port = port
        self.tick = tick
        self.stats: dict[float | None, PassStats] = {}
        self._links: dict[float, PassLink] = {}
        self._conns: dict[float, list[_Connection]] = {}
        # Per pass and direction: bytes of capacity not yet used, and up to when it was counted.
        self._tokens: dict[tuple[float, Direction], int] = {}
        self._counted: dict[float, float] = {}
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ContactProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._run_ticker(), name="proxy-ticker")

    async def close(self) -> None:
        """Cut every connection, stop listening, and wait for everything started here."""
        if self._server is not None:
            self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._handlers):
            task.cancel()
        conns = [c for cs in self._conns.values() for c in cs]
        for conn in conns:
            self.cut(conn)
        tasks = [t for c in conns for t in c.tasks] + list(self._handlers)
        if self._ticker is not None:
            tasks.append(self._ticker)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._server = self._ticker = None

    def link(self, contact: Contact) -> PassLink:
        """The pass this proxy applies for ``contact`` (one ``PassLink`` per pass)."""
        pl = self._links.get(contact.start)
        if pl is None:
            pl = self._links[contact.start] = self.model.open(contact)
        return pl

    def _stats(self, key: float | None) -> PassStats:
        return self.stats.setdefault(key, PassStats())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            now = self.clock()
            contact = self.plan.current(self.satellite, now)
            pl = None if contact is None else self.link(contact)
            if contact is None or pl is None or not pl.is_open(now):
                self._stats(None if contact is None else contact.start).refused += 1
                writer.close()
                return
            stats = self._stats(contact.start)
            try:
                server = await asyncio.open_connection(*self.target)
            except OSError:
                stats.refused += 1
                writer.close()
                return
            stats.accepted += 1
            conn = _Connection(self, pl, stats, (reader, writer), server)
            self._conns.setdefault(contact.start, []).append(conn)
            self._counted.setdefault(contact.start, now)
        except asyncio.CancelledError:
            _abort(writer)
            raise
        finally:
            self._handlers.discard(task)

    def cut(self, conn: _Connection, *, by_link: bool = True) -> None:
        """Reset both sockets of ``conn``; ``by_link`` counts it in the pass's ``cut``."""
        if conn.closed:
            return
        conn.abort()
        conn.stats.cut += by_link
        self.forget(conn)

    def forget(self, conn: _Connection) -> None:
        conns = self._conns.get(conn.link.contact.start)
        if conns is not None and conn in conns:
            conns.remove(conn)

    async def _run_ticker(self) -> None:
        while True:
            self._step()
            await asyncio.sleep(self.tick)

    def _step(self) -> None:
        now = self.clock()
        due = asyncio.get_running_loop().time()
        for start, conns in list(self._conns.items()):
            pl = self._links[start]
            if now >= pl.ends_at:
                for conn in list(conns):
                    self.cut(conn)
            if not conns:
                del self._conns[start]
                self._counted.pop(start, None)
                for direction in DIRECTIONS:
                    self._tokens.pop((start, direction), None)
                continue
            since = self._counted[start]
            self._counted[start] = now
            for direction in DIRECTIONS:
                self._forward(pl, conns, direction, since, now, due + pl.propagation_s)

    def _forward(
        self,
        pl: PassLink,
        conns: list[_Connection],
        direction: Direction,
        since: float,
        now: float,
        due: float,
    ) -> None:
        """Share this tick's capacity among the connections with bytes waiting."""
        key = (pl.contact.start, direction)
        tokens = self._tokens.get(key, 0) + pl.capacity(direction, since, now)
        flows = [c.down if direction == "down" else c.up for c in conns]
        for flow in flows:
            flow.update_space()  # the destination's kernel may have taken bytes since last tick
        waiting = [f for f in flows if f.waiting]
        while tokens > 0 and waiting:
            share = max(1, tokens // len(waiting))
            for flow in waiting:
                n = min(share, len(flow.waiting), tokens)
                if n:
                    flow.send(n, due)
                    tokens -= n
            waiting = [f for f in waiting if f.waiting]
        # An idle link does not bank capacity: keep at most two ticks' worth for the next tick.
        cap = int(pl.rate(direction) / 8 * 2 * self.tick) + pl.config.frame_bytes
        self._tokens[key] = min(tokens, cap)
