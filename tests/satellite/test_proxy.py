"""The contact proxy on real sockets: refusal outside the window, shaping, the cut, TLS."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from orbiter.satellite.contacts import Contact, ContactPlan
from orbiter.satellite.link import GilbertElliott, LinkConfig, LinkModel
from orbiter.satellite.proxy import ContactProxy

DOWN, UP, FER = 4e6, 1e6, 0.01
CONFIG = LinkConfig(
    acquisition_s=0.5,
    rate_down=DOWN,
    rate_up=UP,
    loss=GilbertElliott.from_mean(FER),
    abort_probability=0.0,
)
CONNECTION_LOST = (ConnectionError, asyncio.IncompleteReadError, OSError)


def plan_from(start: float, duration: float) -> ContactPlan:
    return ContactPlan([Contact(start, start + duration, "sat-0", "ground", DOWN, UP)])


class Clock:
    """Wall time from zero: windows are real time, but plan times (and so each pass's seed
    and its losses and abort time) are the same on every run."""

    def __init__(self) -> None:
        self.base = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.base

    async def wait_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self()))


@dataclass
class Ground:
    """The cloud hub stand-in: counts what arrives and streams bytes back until cut."""

    send_up: bool = True
    received: int = 0
    connections: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_at: float = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        sender = asyncio.create_task(stream(writer)) if self.send_up else None
        try:
            while data := await reader.read(65536):
                self.received += len(data)
                self.arrived.set()
        except CONNECTION_LOST:
            pass
        self.lost_at = time.monotonic()
        self.lost.set()
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        writer.transport.abort()


async def stream(writer: asyncio.StreamWriter) -> None:
    """Write as fast as the other side takes it, until the connection goes."""
    block = bytes(65536)
    try:
        while True:
            writer.write(block)
            await writer.drain()
    except CONNECTION_LOST:
        pass


@asynccontextmanager
async def serving(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_refuses_outside_the_window_shapes_inside_and_cuts_at_the_end() -> None:
    clock, start = Clock(), 0.3
    ground = Ground()
    plan = plan_from(start, 3.0)
    async with (
        serving(ground.handle) as port,
        ContactProxy(("127.0.0.1", port), plan, "sat-0", LinkModel(CONFIG), clock=clock) as p,
    ):
        link = p.link(p.plan.contacts[0])
        assert (link.usable_from, link.ends_at) == (start + 0.5, start + 3.0)

        # (1) Before the window: accepted, closed at once, never reaches the ground.
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        assert await asyncio.wait_for(reader.read(100), 1.0) == b""
        writer.close()
        await writer.wait_closed()
        assert p.stats[None].refused == 1 and ground.connections == 0

        # During acquisition: still no link.
        await clock.wait_until(start + 0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        assert await asyncio.wait_for(reader.read(100), 1.0) == b""
        writer.close()
        await writer.wait_closed()
        assert p.stats[start].refused == 1

        # (2) In the window: bulk both ways, shaped to each direction's rate.
        await clock.wait_until(link.usable_from)
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        sender = asyncio.create_task(stream(writer))
        got_up = 0
        cut_seen = "timeout"
        try:
            while data := await asyncio.wait_for(reader.read(65536), 5.0):
                got_up += len(data)
            cut_seen = "eof"
        except CONNECTION_LOST:
            cut_seen = "reset"
        client_lost_at = clock()
        await asyncio.wait_for(ground.lost.wait(), 2.0)
        await asyncio.gather(sender)
        writer.transport.abort()
        stats = p.stats[start]

    # (3) Cut at the window's end, with a reset, not after some timeout.
    assert cut_seen == "reset"
    assert 0.0 <= client_lost_at - link.ends_at < 0.3
    assert 0.0 <= ground.lost_at - clock.base - link.ends_at < 0.3
    assert (stats.accepted, stats.cut, stats.refused) == (1, 1, 1)

    # Proxy and receivers agree to the byte.
    assert stats.down == ground.received
    assert stats.up == got_up
    # Open time 2.5 s: 4 Mbit/s -> ~1.24 MB down, 1 Mbit/s -> ~0.31 MB up, less 1 % lost.
    open_time = link.ends_at - link.usable_from
    for got, rate in ((stats.down, DOWN), (stats.up, UP)):
        expected = rate * open_time * (1 - FER) / 8
        assert 0.85 * expected <= got <= 1.02 * expected, (got, expected)
    assert stats.down <= link.capacity("down", link.usable_from, link.ends_at)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_passes_through_unchanged(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    payload = hashlib.sha256(b"orbiter").digest() * 1000  # 32 KB
    seen: list[bytes] = []
    done = asyncio.Event()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.readexactly(len(payload))
            seen.append(data)
            writer.write(data)
            await writer.drain()
            await done.wait()
        except CONNECTION_LOST:
            pass
        finally:
            writer.transport.abort()

    config = LinkConfig(acquisition_s=0.0, abort_probability=0.0, rate_down=DOWN, rate_up=UP)
    plan = plan_from(time.monotonic() - 0.1, 5.0)
    async with (
        serving(echo, server_ctx) as port,
        ContactProxy(("127.0.0.1", port), plan, "sat-0", LinkModel(config, seed=3)) as p,
    ):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", p.port, ssl=client_ctx, server_hostname="localhost"
        )
        writer.write(payload)
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 3.0)
        peer = writer.get_extra_info("peercert")
        done.set()
        writer.transport.abort()
        stats = p.stats[plan.contacts[0].start]
    # The proxy saw ciphertext (handshake and records add bytes), the ends the plaintext.
    assert seen == [payload] and echoed == payload
    assert peer is not None and ("commonName", "localhost") in peer["subject"][0]
    assert stats.down > len(payload) and stats.up > len(payload)


async def test_close_cuts_open_connections_and_leaves_nothing_running() -> None:
    ground = Ground(send_up=False)
    plan = plan_from(time.monotonic() - 0.1, 30.0)
    config = LinkConfig(acquisition_s=0.0, abort_probability=0.0, rate_down=DOWN, rate_up=UP)
    async with serving(ground.handle) as port:
        proxy = ContactProxy(("127.0.0.1", port), plan, "sat-0", LinkModel(config))
        await proxy.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hello")
        await writer.drain()
        await asyncio.wait_for(ground.arrived.wait(), 1.0)
        await proxy.close()
        with pytest.raises(CONNECTION_LOST):
            await asyncio.wait_for(reader.readexactly(1), 1.0)
        writer.transport.abort()
        await asyncio.wait_for(ground.lost.wait(), 1.0)
    assert proxy.stats[plan.contacts[0].start].cut == 1
    assert proxy.stats[plan.contacts[0].start].down == 5


async def test_an_aborted_pass_cuts_early_and_refuses_the_redial() -> None:
    ground = Ground(send_up=False)
    clock, plan = Clock(), plan_from(0.0, 1.5)
    config = LinkConfig(acquisition_s=0.0, abort_probability=1.0, rate_down=DOWN, rate_up=UP)
    model = LinkModel(config, seed=2)
    async with (
        serving(ground.handle) as port,
        ContactProxy(("127.0.0.1", port), plan, "sat-0", model, clock=clock) as p,
    ):
        link = p.link(plan.contacts[0])
        assert link.aborted and 0.3 < link.ends_at < 1.2  # this seed's abort time
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        with pytest.raises(CONNECTION_LOST):
            await asyncio.wait_for(reader.readexactly(1), 2.0)
        assert 0.0 <= clock() - link.ends_at < 0.3
        writer.transport.abort()
        assert clock() < plan.contacts[0].end  # still inside the planned window
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        assert await asyncio.wait_for(reader.read(1), 1.0) == b""
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(ground.lost.wait(), 1.0)
        stats = p.stats[plan.contacts[0].start]
    assert (stats.accepted, stats.cut, stats.refused) == (1, 1, 1)
