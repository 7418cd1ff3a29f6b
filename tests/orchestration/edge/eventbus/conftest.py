"""Brokers to test against (ours, and a real mosquitto as the reference) and MQTT clients.

``endpoint`` is parametrized: every test that uses it runs once per backend. mosquitto is
started on a free port with a generated config and stopped by its PID. Test clients are
aiomqtt (on paho) for the application's view, and :class:`RawClient` (our codec over a plain
socket) where a test needs to see or send exact packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
import pytest_asyncio
from orbiter.orchestration.edge.eventbus import Broker
from orbiter.orchestration.edge.eventbus.packets import (
    Connack,
    Connect,
    Packet,
    PacketReader,
    encode,
)

from ....fixtures.mosquitto import free_port, running_mosquitto

__all__ = ["free_port", "running_mosquitto"]

TIMEOUT = 5.0  # for anything that should happen at once; only reached when a test fails

P = TypeVar("P", bound=Packet)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    backend: str  # "orbiter" or "mosquitto"
    raws: list[RawClient] = field(default_factory=list)  # closed at teardown, even on failure

    def client(self, identifier: str, **kwargs: Any) -> aiomqtt.Client:
        return aiomqtt.Client(self.host, self.port, identifier=identifier, **kwargs)

    async def open_raw(self, sock: socket.socket | None = None) -> RawClient:
        raw = await RawClient.open(self.host, self.port, sock)
        self.raws.append(raw)
        return raw

    async def raw(self, client_id: str, **kwargs: Any) -> tuple[RawClient, Connack]:
        raw = await self.open_raw(kwargs.pop("sock", None))
        raw.send(Connect(client_id, **kwargs))
        return raw, await raw.expect(Connack)

    async def close_raws(self) -> None:
        for raw in self.raws:
            await raw.close()


@pytest_asyncio.fixture(params=["orbiter", "mosquitto"])
async def endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Endpoint]:
    if request.param == "orbiter":
        async with Broker(port=0) as broker:
            ep = Endpoint("127.0.0.1", broker.port, "orbiter")
            try:
                yield ep
            finally:
                await ep.close_raws()
    else:
        async with running_mosquitto(tmp_path) as port:
            ep = Endpoint("127.0.0.1", port, "mosquitto")
            try:
                yield ep
            finally:
                await ep.close_raws()


StartBroker = Callable[..., Awaitable[tuple[Broker, Endpoint]]]


@pytest_asyncio.fixture
async def start_broker() -> AsyncIterator[StartBroker]:
    """Starts our Broker with the given options; everything is stopped at teardown."""
    async with AsyncExitStack() as stack:
        endpoints: list[Endpoint] = []

        async def start(**options: Any) -> tuple[Broker, Endpoint]:
            broker = await stack.enter_async_context(Broker(port=0, **options))
            endpoints.append(ep := Endpoint("127.0.0.1", broker.port, "orbiter"))
            return broker, ep

        try:
            yield start
        finally:
            for ep in endpoints:
                await ep.close_raws()


class RawClient:
    """A socket speaking MQTT through our codec: exact packets in both directions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.packets = PacketReader(reader, 1 << 24)
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, sock: socket.socket | None = None) -> RawClient:
        if sock is not None:
            reader, writer = await asyncio.open_connection(sock=sock)
        else:
            reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, packet: Packet | bytes) -> None:
        self.writer.write(packet if isinstance(packet, bytes) else encode(packet))

    async def read(self, within: float = TIMEOUT) -> Packet | None:
        async with asyncio.timeout(within):
            return await self.packets.read()

    async def expect(self, kind: type[P], within: float = TIMEOUT) -> P:
        packet = await self.read(within)
        assert isinstance(packet, kind), f"expected {kind.__name__}, got {packet!r}"
        return packet

    async def wait_closed_by_peer(self, within: float = TIMEOUT) -> int:
        """Read until the server closes the connection; how many bytes came before."""
        total = 0
        async with asyncio.timeout(within):
            try:
                while chunk := await self.reader.read(1 << 16):
                    total += len(chunk)
            except ConnectionResetError:
                pass
        return total

    async def close(self) -> None:
        if self.writer.transport.is_closing():
            return
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def receive(client: aiomqtt.Client, within: float = TIMEOUT) -> aiomqtt.Message:
    async with asyncio.timeout(within):
        return await anext(client.messages)


async def receive_until(
    client: aiomqtt.Client, sentinel: str = "end"
) -> list[tuple[str, bytes, int, bool]]:
    """(topic, payload, qos, retain) of every message before the one on ``sentinel``.

    A publisher sends the sentinel last; per-connection ordering makes "nothing else arrived
    before it" a real check that some message was not delivered.
    """
    got = []
    while (m := await receive(client)).topic.value != sentinel:
        assert isinstance(m.payload, bytes)
        got.append((m.topic.value, m.payload, m.qos, m.retain))
    return got
