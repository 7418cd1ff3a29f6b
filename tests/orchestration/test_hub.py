"""CloudHub and EdgeHub over real mutual-TLS WebSockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from orbiter.orchestration.apiserver.certificates import CertificateAuthority
from orbiter.orchestration.cloud.hub import (
    CloudHub,
    NodeNotConnected,
    mtls_server_context,
    node_name_from_certificate,
)
from orbiter.orchestration.edge.hub import (
    EdgeHub,
    NotConnected,
    backoff_delay,
    events_url,
    keepalive_message,
    mtls_client_context,
)
from orbiter.orchestration.protocol import Message

T = TypeVar("T")
WITHIN = 10.0  # generous bound on any awaited condition; passing runs take milliseconds
HUB_LOG = "orbiter.orchestration.cloud.hub"


async def within(awaitable: Awaitable[T], seconds: float = WITHIN) -> T:
    return await asyncio.wait_for(awaitable, seconds)


class PKI:
    """A CA in a temp dir, a serving certificate for 127.0.0.1 and node client certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = CertificateAuthority.load_or_create(directory)
        self._n = 0

    def _write(self, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
        self._n += 1
        crt, pem = self.dir / f"{self._n}.crt", self.dir / f"{self._n}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return crt, pem

    def server(self) -> ssl.SSLContext:
        cert, key = self.ca.issue("cloudhub", hosts=("127.0.0.1",), server=True)
        return mtls_server_context(*self._write(cert, key), self.dir / "ca.crt")

    def node(self, name: str, *, cn: str | None = None) -> tuple[ssl.SSLContext, x509.Certificate]:
        cert, key = self.ca.issue(
            cn or f"system:node:{name}", organizations=("system:nodes",), client=True
        )
        return mtls_client_context(*self._write(cert, key), self.dir / "ca.crt"), cert

    def anonymous(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.dir / "ca.crt"))


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


class Cloud:
    """A CloudHub whose upstream messages and connection events land in queues."""

    def __init__(self, pki: PKI, **kw: Any) -> None:
        self.up: asyncio.Queue[tuple[str, Message]] = asyncio.Queue()
        self.events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.hub = CloudHub(pki.server(), handler=self._handle, port=kw.pop("port", 0), **kw)
        self.hub.on_connect(lambda node: self.events.put_nowait(("connect", node)))
        self.hub.on_disconnect(lambda node: self.events.put_nowait(("disconnect", node)))

    async def _handle(self, node: str, message: Message) -> None:
        await self.up.put((node, message))

    def url(self, node: str) -> str:
        return events_url(f"127.0.0.1:{self.hub.port}", node)


@contextlib.asynccontextmanager
async def cloud(pki: PKI, **kw: Any) -> AsyncIterator[Cloud]:
    c = Cloud(pki, **kw)
    async with c.hub:
        yield c


@contextlib.asynccontextmanager
async def dial(
    c: Cloud, ctx: ssl.SSLContext, node_id: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A bare WebSocket client: sends exactly what the test says, nothing else."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(c.url(node_id), ssl=ctx, headers={"node_id": node_id}) as ws,
    ):
        yield ws


async def ignore(message: Message) -> None:
    """An edge handler for tests that send nothing downstream."""


def pod_status(n: int = 0) -> Message:
    return Message(
        source="edged",
        group="resource",
        operation="update",
        resource="default/podstatus/web",
        content={"n": n},
    )


def configmap_insert() -> Message:
    return Message(
        source="edgecontroller",
        group="resource",
        operation="insert",
        resource="default/configmap/cfg",
        content={"metadata": {"name": "cfg", "uid": "u1"}},
        resource_version="7",
    )


async def exchanges(c: Cloud, ws: aiohttp.ClientWebSocketResponse, node: str) -> None:
    """The node still talks both ways over its bare client."""
    down = configmap_insert()
    await c.hub.send(node, down)
    got = Message.decode(await within(ws.receive_str()))
    assert got.msg_id == down.msg_id
    await ws.send_bytes(got.response().encode())
    sender, ack = await within(c.up.get())
    assert (sender, ack.operation, ack.parent_msg_id) == (node, "response", down.msg_id)


# -- CloudHub and EdgeHub together -------------------------------------------------------------


async def test_exchange_both_ways(pki: PKI) -> None:
    async with cloud(pki) as c:
        down: asyncio.Queue[Message] = asyncio.Queue()
        links: asyncio.Queue[bool] = asyncio.Queue()
        ctx, _ = pki.node("n1")
        edge = EdgeHub(c.url("n1"), ctx, "n1", handler=down.put)
        edge.on_connection(links.put_nowait)
        async with edge:
            assert await within(links.get()) is True
            assert await within(c.events.get()) == ("connect", "n1")
            assert c.hub.sessions == {"n1"} and edge.connected

            status = pod_status(1)
            await edge.send(status)
            node, got = await within(c.up.get())
            assert (node, got.msg_id, got.content) == ("n1", status.msg_id, {"n": 1})

            insert = configmap_insert()
            await c.hub.send("n1", insert)
            received = await within(down.get())
            assert received.to_dict() == insert.to_dict()
            await edge.send(received.response())
            node, ack = await within(c.up.get())
            assert (ack.operation, ack.parent_msg_id) == ("response", insert.msg_id)

        assert await within(links.get()) is False
        assert await within(c.events.get()) == ("disconnect", "n1")
        assert c.hub.sessions == frozenset()
        with pytest.raises(NodeNotConnected):
            await c.hub.send("n1", configmap_insert())
        with pytest.raises(NotConnected):
            await edge.send(pod_status())


async def test_edge_keepalives_hold_the_session_and_stay_in_the_hub(pki: PKI) -> None:
    async with cloud(pki, keepalive_timeout=0.4) as c:
        ctx, _ = pki.node("n1")
        async with EdgeHub(c.url("n1"), ctx, "n1", handler=ignore, heartbeat=0.05) as edge:
            assert await within(c.events.get()) == ("connect", "n1")
            await asyncio.sleep(1.0)  # the scenario: 2.5 keepalive timeouts' worth of time
            assert c.events.empty() and c.hub.sessions == {"n1"}
            assert c.up.empty()  # keepalives reset the timer; the handler never sees them
            await edge.send(pod_status())
            assert (await within(c.up.get()))[0] == "n1"


async def test_keepalive_absence_ends_the_session(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=HUB_LOG)
    loop = asyncio.get_running_loop()
    async with cloud(pki, keepalive_timeout=0.5) as c:
        ctx, _ = pki.node("n1")
        async with dial(c, ctx, "n1") as ws:
            assert await within(c.events.get()) == ("connect", "n1")
            for _ in range(10):  # 1 s of keepalives every 0.1 s: twice the timeout
                await ws.send_bytes(keepalive_message().encode())
                await asyncio.sleep(0.1)
            assert c.events.empty()
            quiet = loop.time()
            assert await within(c.events.get()) == ("disconnect", "n1")
            assert loop.time() - quiet >= 0.35  # the last keepalive was 0.1 s before
            closing = await within(ws.receive())
            assert closing.type is aiohttp.WSMsgType.CLOSE
    assert "closing the session of node n1: no keepalive for 0.5 s" in caplog.text


async def test_second_session_replaces_the_first(pki: PKI) -> None:
    async with cloud(pki) as c:
        ctx, _ = pki.node("n1")
        async with dial(c, ctx, "n1") as first:
            assert await within(c.events.get()) == ("connect", "n1")
            async with dial(c, ctx, "n1") as second:
                assert await within(c.events.get()) == ("disconnect", "n1")
                assert await within(c.events.get()) == ("connect", "n1")
                assert (await within(first.receive())).type is aiohttp.WSMsgType.CLOSE
                assert c.hub.sessions == {"n1"}
                await exchanges(c, second, "n1")


async def test_node_limit(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    async with cloud(pki, node_limit=1) as c:
        ctx1, _ = pki.node("n1")
        ctx2, _ = pki.node("n2")
        async with dial(c, ctx1, "n1"):
            assert await within(c.events.get()) == ("connect", "n1")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with dial(c, ctx2, "n2"):
                    pass
            assert refused.value.status == 503
            async with dial(c, ctx1, "n1") as again:  # replacing its own session is allowed
                await exchanges(c, again, "n1")
    assert "refused node n2" in caplog.text and "node limit 1" in caplog.text


# -- who may connect -------------------------------------------------------------------------


async def test_certificate_must_match_node_id(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    async with cloud(pki) as c:
        ctx, _ = pki.node("n1")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            async with dial(c, ctx, "n2"):
                pass
        assert refused.value.status == 403
        admin, _ = pki.node("admin", cn="orbiter-admin")
        with pytest.raises(aiohttp.WSServerHandshakeError) as not_a_node:
            async with dial(c, admin, "admin"):
                pass
        assert not_a_node.value.status == 403
        assert c.hub.sessions == frozenset() and c.events.empty()
    assert "node_id header 'n2' does not match the certificate's node 'n1'" in caplog.text
    assert "not a node certificate" in caplog.text


async def test_client_without_certificate_is_refused(pki: PKI) -> None:
    async with cloud(pki) as c:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with dial(c, pki.anonymous(), "n1"):
                pass
        assert c.hub.sessions == frozenset() and c.events.empty()


def test_hub_insists_on_client_certificates(pki: PKI) -> None:
    ctx = pki.server()
    ctx.verify_mode = ssl.CERT_OPTIONAL
    with pytest.raises(ValueError, match="CERT_REQUIRED"):
        CloudHub(ctx, handler=lambda node, message: asyncio.sleep(0))


def test_node_name_from_certificate() -> None:
    def subject(cn: str) -> dict[str, Any]:
        return {"subject": ((("organizationName", "system:nodes"),), (("commonName", cn),))}

    assert node_name_from_certificate(subject("system:node:edge-1")) == "edge-1"
    assert node_name_from_certificate(subject("system:node:")) is None
    assert node_name_from_certificate(subject("edge-1")) is None
    assert node_name_from_certificate(None) is None


# -- a misbehaving node loses only its own session -------------------------------------------


def _oversized() -> bytes:
    message = pod_status()
    message.content = "x" * 5000
    return message.encode()


def _out_of_protocol() -> bytes:
    message = pod_status()
    message.operation = "self-destruct"
    return message.encode()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (_oversized(), "frame over the 4096-byte cap"),
        (b'{"header": {"msg_id": "1"', "bad message: message is not valid JSON"),
        (
            b'{"header": {}, "route": {"operation": "update"}}',
            "bad message: message.header.msg_id is required",
        ),
        (
            _out_of_protocol(),
            "out-of-protocol message: operation 'self-destruct' is not allowed in group 'resource'",
        ),
    ],
    ids=["oversized", "malformed-json", "invalid-message", "out-of-protocol"],
)
async def test_bad_frame_closes_only_that_session(
    pki: PKI, caplog: pytest.LogCaptureFixture, frame: bytes, reason: str
) -> None:
    async with cloud(pki, max_frame=4096) as c:
        good_ctx, _ = pki.node("good")
        bad_ctx, _ = pki.node("bad")
        async with dial(c, good_ctx, "good") as good, dial(c, bad_ctx, "bad") as bad:
            assert {await within(c.events.get()) for _ in range(2)} == {
                ("connect", "good"),
                ("connect", "bad"),
            }
            await bad.send_str(frame.decode())
            assert await within(c.events.get()) == ("disconnect", "bad")
            closing = await within(bad.receive())
            assert closing.type is aiohttp.WSMsgType.CLOSE
            assert c.hub.sessions == {"good"} and c.up.empty()
            await exchanges(c, good, "good")
    assert f"closing the session of node bad: {reason}" in caplog.text


# -- EdgeHub: reconnecting -------------------------------------------------------------------


def test_backoff_delay_doubles_up_to_the_cap_with_jitter() -> None:
    assert [backoff_delay(n, 1.0, 30.0, lambda: 1.0) for n in range(7)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    assert backoff_delay(3, 1.0, 30.0, lambda: 0.0) == 4.0  # jitter keeps at least half
    assert backoff_delay(10_000, 1.0, 30.0, lambda: 0.5) == 22.5


async def test_edge_reconnects_after_the_cloud_restarts(pki: PKI) -> None:
    draws = 0
    dials_failed = asyncio.Event()

    def random() -> float:  # counts back-offs; 1.0 = no jitter, so delays are exact
        nonlocal draws
        draws += 1
        if draws >= 4:
            dials_failed.set()
        return 1.0

    links: asyncio.Queue[bool] = asyncio.Queue()
    ctx, _ = pki.node("n1")
    c = Cloud(pki)
    await c.hub.start()
    port = c.hub.port
    edge = EdgeHub(
        c.url("n1"), ctx, "n1", handler=ignore, reconnect_backoff=(0.02, 0.16), random=random
    )
    edge.on_connection(links.put_nowait)
    try:
        async with edge:
            assert await within(links.get()) is True
            await c.hub.stop()
            assert await within(links.get()) is False
            await within(dials_failed.wait())  # lost, then three refused dials
            restarted = Cloud(pki, port=port)
            async with restarted.hub:
                assert await within(links.get()) is True
                assert await within(restarted.events.get()) == ("connect", "n1")
                await edge.send(pod_status(2))
                node, got = await within(restarted.up.get())
                assert (node, got.content) == ("n1", {"n": 2})
            assert await within(links.get()) is False
    finally:
        await c.hub.stop()
    assert list(edge.retry_delays)[:4] == [0.02, 0.04, 0.08, 0.16]


async def test_forced_reconnect_uses_the_new_ssl_context(pki: PKI) -> None:
    first_ctx, first_cert = pki.node("n1")
    current = [first_ctx]
    async with cloud(pki) as c:
        links: asyncio.Queue[bool] = asyncio.Queue()
        edge = EdgeHub(c.url("n1"), lambda: current[-1], "n1", handler=ignore)
        edge.on_connection(links.put_nowait)
        async with edge:
            assert await within(links.get()) is True
            assert await within(c.events.get()) == ("connect", "n1")
            serial = c.hub.peer_certificate("n1")
            assert (
                serial is not None and int(serial["serialNumber"], 16) == first_cert.serial_number
            )

            rotated_ctx, rotated_cert = pki.node("n1")  # a certificate rotation
            current.append(rotated_ctx)
            await edge.reconnect()
            assert await within(links.get()) is False
            assert await within(links.get()) is True
            assert await within(c.events.get()) == ("disconnect", "n1")
            assert await within(c.events.get()) == ("connect", "n1")
            now = c.hub.peer_certificate("n1")
            assert now is not None and int(now["serialNumber"], 16) == rotated_cert.serial_number
            assert list(edge.retry_delays) == []  # forced: redialled at once, no back-off
            await edge.send(pod_status(3))
            assert (await within(c.up.get()))[1].content == {"n": 3}


async def test_downstream_garbage_is_dropped_by_the_edge(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    async with cloud(pki) as c:
        down: asyncio.Queue[Message] = asyncio.Queue()
        ctx, _ = pki.node("n1")
        async with EdgeHub(c.url("n1"), ctx, "n1", handler=down.put) as edge:
            assert await within(c.events.get()) == ("connect", "n1")
            session = c.hub._sessions["n1"]
            await session.ws.send_str(orjson.dumps({"route": {}}).decode())
            await c.hub.send("n1", configmap_insert())
            assert (await within(down.get())).resource == "default/configmap/cfg"
            assert edge.connected
    assert "dropped a bad message from the cloud" in caplog.text


async def test_cloud_ends_a_session_and_the_edge_comes_back(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    async with cloud(pki) as c:
        links: asyncio.Queue[bool] = asyncio.Queue()
        ctx, _ = pki.node("n1")
        edge = EdgeHub(c.url("n1"), ctx, "n1", handler=ignore, reconnect_backoff=(0.01, 0.05))
        edge.on_connection(links.put_nowait)
        async with edge:
            assert await within(links.get()) is True
            assert await within(c.events.get()) == ("connect", "n1")
            await c.hub.disconnect("n1", "node object deleted")
            assert await within(c.events.get()) == ("disconnect", "n1")
            assert await within(links.get()) is False
            assert await within(links.get()) is True  # redialled after its back-off
            assert await within(c.events.get()) == ("connect", "n1")
    assert "closing the session of node n1: node object deleted" in caplog.text
