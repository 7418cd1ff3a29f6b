"""Edge nodes join the cloud: tokens, the join endpoint over real HTTPS, certificates, rotation."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import math
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from orbiter.orchestration.apiserver.certificates import CertificateAuthority
from orbiter.orchestration.cloud.joining import (
    MAX_CSR_BYTES,
    JoinHandlers,
    JoinRefused,
    JoinServer,
    create_join_token,
    token_signing_key,
)
from orbiter.orchestration.edge.joining import (
    BACKOFF,
    CertificateRotator,
    JoinError,
    NodeCredentials,
    join,
)
from orbiter.orchestration.protocol.tokens import (
    MAX_TOKEN_LENGTH,
    TokenExpired,
    TokenInvalid,
    ca_cert_hash,
    create_token,
    parse_token,
    verify_jwt,
)

from orbiter.cli import parse_duration

ORBITER = str(Path(sys.executable).with_name("orbiter"))
CLOUD_LOGGER = "orbiter.orchestration.cloud.joining"
KEY = b"k" * 32


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def der(ca: CertificateAuthority) -> bytes:
    return ca.cert.public_bytes(serialization.Encoding.DER)


def make_csr(
    cn: str,
    orgs: tuple[str, ...] = ("system:nodes",),
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cloud"
    path.mkdir()
    CertificateAuthority.load_or_create(path)
    return path


@pytest.fixture
def ca(cloud_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(cloud_dir)


@pytest.fixture
def connected() -> set[str]:
    return set()


@pytest_asyncio.fixture
async def server(
    cloud_dir: Path, clock: FakeClock, connected: set[str]
) -> AsyncIterator[JoinServer]:
    async def node_exists(name: str) -> bool:
        return name == "existing"

    async with JoinServer(
        cloud_dir, port=0, is_connected=connected.__contains__, node_exists=node_exists, clock=clock
    ) as srv:
        yield srv


async def call(
    server: JoinServer,
    path: str,
    *,
    data: bytes | AsyncIterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """A raw request to the join endpoint; (status, parsed Status or the body bytes)."""
    if ssl_ctx is None:
        ssl_ctx = ssl.create_default_context(cadata=server.handlers.ca_pem().decode())
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + path, data=data, headers=headers, ssl=ssl_ctx) as resp,
    ):
        body = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, json.loads(body)
        return resp.status, body


# --- tokens ---------------------------------------------------------------------------------


def test_token_round_trip(ca: CertificateAuthority) -> None:
    token = create_token(der(ca), KEY, ttl=60, now=1000)
    assert token.count(".") == 3 and len(token) < 300
    ca_hash, jwt = parse_token(token + "\n")
    assert ca_hash == ca_cert_hash(der(ca))
    claims = verify_jwt(jwt, KEY, now=1059)
    assert claims["exp"] == 1060 and claims["iat"] == 1000 and len(claims["jti"]) == 32
    header = json.loads(base64.urlsafe_b64decode(jwt.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert create_token(der(ca), KEY, now=1000) != create_token(der(ca), KEY, now=1000)  # jti


def test_expired_and_forged_tokens_say_which() -> None:
    _, jwt = parse_token(create_token(b"ca", KEY, ttl=60, now=1000))
    with pytest.raises(TokenExpired, match=r"token expired at 1970-01-01T00:17:40Z"):
        verify_jwt(jwt, KEY, now=1060)
    with pytest.raises(TokenInvalid, match=r"signature does not verify \(forged"):
        verify_jwt(jwt, b"another cloud's key", now=1000)
    # A forged token is reported as forged even once expired.
    with pytest.raises(TokenInvalid):
        verify_jwt(jwt, b"another cloud's key", now=5000)


def test_tampered_tokens_are_refused() -> None:
    _, jwt = parse_token(create_token(b"ca", KEY, ttl=60, now=1000))
    header, claims, signature = jwt.split(".")
    longer = base64.urlsafe_b64encode(b'{"exp":99999999999,"iat":1000,"jti":"x"}').rstrip(b"=")
    with pytest.raises(TokenInvalid, match="signature"):
        verify_jwt(f"{header}.{longer.decode()}.{signature}", KEY, now=1000)
    other = ("B" if signature[0] != "B" else "C") + signature[1:]
    with pytest.raises(TokenInvalid, match="signature"):
        verify_jwt(f"{header}.{claims}.{other}", KEY, now=1000)
    none = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(TokenInvalid, match="not HS256"):
        verify_jwt(f"{none}.{claims}.", KEY, now=1000)


@pytest.mark.parametrize(
    "jwt",
    [
        "a.b",  # two parts
        "eyJ!.e30.AAAA",  # not base64url
        "eyJhbGciOiJIUzI1NiJ9=.e30.AAAA",  # padding is not base64url
        "eyJhbGciOiJIUzI1NiJ9.e30.A",  # impossible length
        "bm90IGpzb24.e30.AAAA",  # header is not JSON
        "W10.e30.AAAA",  # header is not an object
    ],
)
def test_malformed_jwts_are_invalid(jwt: str) -> None:
    with pytest.raises(TokenInvalid, match="malformed token"):
        verify_jwt(jwt, KEY)


def test_parse_token_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="4 parts"):
        parse_token("abc")
    with pytest.raises(ValueError, match="hex SHA-256"):
        parse_token("zz.a.b.c")
    with pytest.raises(ValueError, match=f"longer than {MAX_TOKEN_LENGTH}"):
        parse_token("a" * 64 + "." + "b" * MAX_TOKEN_LENGTH)
    with pytest.raises(TokenInvalid, match="longer than"):
        verify_jwt("e30." * 1000, KEY)
    with pytest.raises(ValueError, match="positive"):
        create_token(b"ca", KEY, ttl=0)


def test_durations() -> None:
    assert parse_duration("30m") == 1800
    assert parse_duration("24h") == 86400
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("1h30m") == 5400
    for bad in ("5", "0s", "1w", "-1h", ""):
        with pytest.raises(Exception, match="invalid duration"):
            parse_duration(bad)


# --- joining over HTTPS -----------------------------------------------------------------------


async def test_join_issues_a_client_certificate(
    server: JoinServer, cloud_dir: Path, ca: CertificateAuthority, tmp_path: Path
) -> None:
    edge_dir = tmp_path / "edge"
    creds = await join(server.url, create_join_token(cloud_dir, 600), "edge-1", edge_dir)

    assert creds.node_name == "edge-1"
    assert {p.name for p in edge_dir.iterdir()} == {"ca.crt", "node.crt", "node.key"}
    assert (edge_dir / "node.key").stat().st_mode & 0o777 == 0o600
    assert (edge_dir / "ca.crt").read_bytes() == ca.cert_pem
    cert = x509.load_pem_x509_certificate((edge_dir / "node.crt").read_bytes())
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "system:node:edge-1"
    )
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == ["system:nodes"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=365)
    key = serialization.load_pem_private_key((edge_dir / "node.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()

    # The credentials work for mTLS: the endpoint accepts them for a renewal.
    status, body = await call(
        server,
        "/edge.crt",
        data=make_csr("system:node:edge-1"),
        headers={"NodeName": "edge-1"},
        ssl_ctx=creds.ssl_context(),
    )
    assert status == 200 and body.startswith(b"-----BEGIN CERTIFICATE-----")


async def test_ca_and_node_endpoints(server: JoinServer, ca: CertificateAuthority) -> None:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    assert await call(server, "/ca.crt", ssl_ctx=insecure) == (200, ca.cert_pem)
    assert (await call(server, "/node/existing"))[0] == 200
    status, body = await call(server, "/node/missing")
    assert status == 404 and body["reason"] == "NotFound"
    assert (await call(server, "/node/Not_A_Name"))[0] == 404


async def test_expired_token_is_refused(
    server: JoinServer, cloud_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    token = create_join_token(cloud_dir, 3600, now=clock.now - 7200)
    with pytest.raises(JoinError, match="token expired at") as info:
        await join(server.url, token, "edge-1", tmp_path / "edge")
    assert info.value.status == 401
    assert not (tmp_path / "edge" / "node.crt").exists()

    status, body = await call(
        server,
        "/edge.crt",
        data=make_csr("system:node:edge-1"),
        headers={"NodeName": "edge-1", "Authorization": f"Bearer {parse_token(token)[1]}"},
    )
    assert status == 401 and body["reason"] == "Unauthorized" and "expired" in body["message"]


async def test_forged_token_is_refused(
    server: JoinServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    forged = create_token(der(ca), b"a key this cloud never used")  # the right CA hash
    with pytest.raises(JoinError, match=r"signature does not verify \(forged") as info:
        await join(server.url, forged, "edge-1", tmp_path / "edge")
    assert info.value.status == 401


async def test_wrong_ca_hash_is_refused_before_the_csr(
    server: JoinServer, cloud_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CLOUD_LOGGER)
    other_dir = tmp_path / "other-cloud"
    other_dir.mkdir()
    CertificateAuthority.load_or_create(other_dir)
    token = create_join_token(other_dir, 600)
    with pytest.raises(JoinError, match="CA certificate hash does not match the token") as info:
        await join(server.url, token, "edge-1", tmp_path / "edge")
    assert parse_token(token)[0] in str(info.value) and "wrong cloud" in str(info.value)
    assert info.value.status is None
    assert not (tmp_path / "edge").exists()  # not even the CA was saved
    assert not [r for r in caplog.records if r.name == CLOUD_LOGGER]  # no CSR reached the cloud

    # Control: a request that does reach /edge.crt is logged.
    await join(server.url, create_join_token(cloud_dir, 600), "edge-1", tmp_path / "edge")
    assert [r for r in caplog.records if r.name == CLOUD_LOGGER]


async def test_bad_csrs_are_refused_with_the_reason(server: JoinServer, cloud_dir: Path) -> None:
    jwt = parse_token(create_join_token(cloud_dir, 600))[1]
    headers = {"NodeName": "edge-1", "Authorization": f"Bearer {jwt}"}
    cases = [
        (make_csr("system:node:edge-2"), "common name is 'system:node:edge-2'"),
        (make_csr("system:node:edge-1", ("system:masters",)), "organization"),
        (make_csr("system:node:edge-1", ("system:nodes", "system:masters")), "organization"),
        (b"not a CSR", "not a usable certificate signing request"),
    ]
    for body, message in cases:
        status, reply = await call(server, "/edge.crt", data=body, headers=headers)
        assert status == 400, reply
        assert message in reply["message"]
    status, reply = await call(
        server, "/edge.crt", data=make_csr("system:node:x"), headers={**headers, "NodeName": "X!"}
    )
    assert status == 400 and "invalid node name" in reply["message"]


async def test_oversized_body_is_refused(server: JoinServer, cloud_dir: Path) -> None:
    jwt = parse_token(create_join_token(cloud_dir, 600))[1]
    headers = {"NodeName": "edge-1", "Authorization": f"Bearer {jwt}"}
    big = b"x" * (MAX_CSR_BYTES + 1)
    status, reply = await call(server, "/edge.crt", data=big, headers=headers)
    assert status == 413 and "larger than" in reply["message"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length to refuse up front
        for _ in range(5):
            yield b"x" * (MAX_CSR_BYTES // 4)

    status, reply = await call(server, "/edge.crt", data=chunked(), headers=headers)
    assert status == 413 and reply["reason"] == "RequestEntityTooLarge"


async def test_name_held_by_a_connected_node_is_refused(
    server: JoinServer, cloud_dir: Path, connected: set[str], tmp_path: Path
) -> None:
    connected.add("edge-1")
    with pytest.raises(JoinError, match="'edge-1' is connected") as info:
        await join(server.url, create_join_token(cloud_dir, 600), "edge-1", tmp_path / "edge")
    assert info.value.status == 409
    await join(server.url, create_join_token(cloud_dir, 600), "edge-2", tmp_path / "edge")


async def test_a_token_cannot_join_over_an_existing_node(
    server: JoinServer, cloud_dir: Path, tmp_path: Path
) -> None:
    # The token is shared; taking over "existing" would hand its pods and Secrets away.
    with pytest.raises(JoinError, match="'existing' already exists") as info:
        await join(server.url, create_join_token(cloud_dir, 600), "existing", tmp_path / "edge")
    assert info.value.status == 409


async def test_renewal_needs_the_nodes_own_certificate(
    server: JoinServer, cloud_dir: Path, tmp_path: Path
) -> None:
    status, reply = await call(
        server, "/edge.crt", data=make_csr("system:node:edge-1"), headers={"NodeName": "edge-1"}
    )
    assert status == 401 and "no credentials" in reply["message"]
    creds = await join(server.url, create_join_token(cloud_dir, 600), "edge-1", tmp_path / "e")
    status, reply = await call(
        server,
        "/edge.crt",
        data=make_csr("system:node:edge-2"),
        headers={"NodeName": "edge-2"},
        ssl_ctx=creds.ssl_context(),
    )
    assert status == 403 and "cannot renew node 'edge-2'" in reply["message"]


def test_handlers_check_peer_certificates_and_keys(
    ca: CertificateAuthority, cloud_dir: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    handlers = JoinHandlers(ca, clock=clock)
    csr = make_csr("system:node:edge-1")
    own = handlers.sign("edge-1", ec.generate_private_key(ec.SECP256R1()).public_key(), clock.now)
    assert handlers.handle_csr(csr, node_name="edge-1", peer_cert=own).startswith(b"-----BEGIN")

    foreign_dir = tmp_path / "foreign"
    foreign_dir.mkdir()
    foreign = JoinHandlers(CertificateAuthority.load_or_create(foreign_dir)).sign(
        "edge-1", ec.generate_private_key(ec.SECP256R1()).public_key(), clock.now
    )
    with pytest.raises(JoinRefused, match="not issued by this cloud's CA"):
        handlers.handle_csr(csr, node_name="edge-1", peer_cert=foreign)
    clock.now += 366 * 86400
    with pytest.raises(JoinRefused, match="not valid now") as info:
        handlers.handle_csr(csr, node_name="edge-1", peer_cert=own)
    assert info.value.code == 401

    clock.now = time.time()
    odd_keys: list[tuple[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, str]] = [
        (ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        (rsa.generate_private_key(65537, 2048), "RSAPublicKey"),
    ]
    for key, what in odd_keys:
        with pytest.raises(JoinRefused, match=f"ECDSA P-256 or P-384, not {what}"):
            handlers.handle_csr(
                make_csr("system:node:edge-1", key=key),
                node_name="edge-1",
                authorization=f"Bearer {parse_token(create_join_token(cloud_dir))[1]}",
            )


# --- rotation ---------------------------------------------------------------------------------


async def test_rotation_on_schedule_over_mtls(
    server: JoinServer, cloud_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    creds = await join(server.url, create_join_token(cloud_dir, 600), "edge-1", tmp_path / "e")
    old_key = creds.key_path.read_bytes()
    delays: list[float] = []
    rotated: list[NodeCredentials] = []
    done = asyncio.Event()

    async def sleep(delay: float) -> None:
        if done.is_set():
            await asyncio.Event().wait()  # parked until the rotator stops
        delays.append(delay)
        clock.now += delay

    async def on_rotated(new: NodeCredentials) -> None:
        rotated.append(new)
        done.set()

    rotator = CertificateRotator(
        creds, server.url, on_rotated=on_rotated, clock=clock, rand=lambda: 0.5, sleep=sleep
    )
    start = clock.now
    before = creds.cert.not_valid_before_utc.timestamp()
    after = creds.cert.not_valid_after_utc.timestamp()
    deadline = rotator.deadline()
    assert deadline == pytest.approx(before + 0.8 * (after - before))
    async with rotator:
        await asyncio.wait_for(done.wait(), 30)

    assert max(delays) <= 3600 and sum(delays) == pytest.approx(deadline - start)
    [new] = rotated
    assert rotator.credentials is new and new.node_name == "edge-1"
    assert new.cert.not_valid_after_utc > creds.cert.not_valid_after_utc
    assert new.cert.not_valid_after_utc.timestamp() == pytest.approx(deadline + 365 * 86400, abs=1)
    assert new.cert.serial_number != creds.cert.serial_number
    assert NodeCredentials.load(tmp_path / "e").cert == new.cert
    assert new.key_path.read_bytes() != old_key
    assert new.key_path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["ca.crt", "node.crt", "node.key"]


async def test_rotation_failures_back_off(
    server: JoinServer, cloud_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    creds = await join(server.url, create_join_token(cloud_dir, 600), "edge-1", tmp_path / "e")
    with socket.socket() as s:  # a port nobody listens on: every renewal fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays: list[float] = []
    done = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        clock.now += delay
        if len(delays) == 8:
            done.set()
            await asyncio.Event().wait()

    rotator = CertificateRotator(
        creds, f"127.0.0.1:{port}", clock=clock, rand=lambda: 0.0, sleep=sleep, max_sleep=math.inf
    )
    async with rotator:
        await asyncio.wait_for(done.wait(), 30)
    assert delays[1:] == [*BACKOFF, 32.0, 32.0]
    assert NodeCredentials.load(tmp_path / "e").cert == creds.cert  # untouched


async def test_a_node_clock_far_ahead_does_not_renew_in_a_loop(
    server: JoinServer, cloud_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    """Every certificate looks past its renewal deadline to a node whose clock runs 400 days
    ahead; it renews once, then waits a tenth of the lifetime before the next attempt."""
    creds = await join(server.url, create_join_token(cloud_dir, 600), "edge-1", tmp_path / "e")
    node_clock = FakeClock()
    node_clock.now = clock.now + 400 * 86400
    renewed: list[float] = []
    slept: list[float] = []
    done = asyncio.Event()

    async def sleep(delay: float) -> None:
        if len(renewed) >= 2:
            done.set()
            await asyncio.Event().wait()  # parked until the rotator stops
        slept.append(delay)
        node_clock.now += delay

    async def on_rotated(new: NodeCredentials) -> None:
        renewed.append(node_clock.now)

    rotator = CertificateRotator(
        creds, server.url, on_rotated=on_rotated, clock=node_clock, sleep=sleep, max_sleep=math.inf
    )
    async with rotator:
        await asyncio.wait_for(done.wait(), 30)
    cert = rotator.credentials.cert
    lifetime = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    assert renewed[1] - renewed[0] == pytest.approx(lifetime / 10)
    assert slept == [pytest.approx(lifetime / 10)]


def test_short_lived_certificates_are_backdated_a_tenth_of_their_lifetime_at_most(
    ca: CertificateAuthority,
) -> None:
    now = time.time()
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    short = JoinHandlers(ca, cert_days=60 / 86400).sign("edge-1", key, now)
    assert now - short.not_valid_before_utc.timestamp() <= 6 + 1  # X.509 keeps whole seconds
    assert short.not_valid_after_utc.timestamp() == pytest.approx(now + 60, abs=1)
    long = JoinHandlers(ca).sign("edge-1", key, now)
    assert now - long.not_valid_before_utc.timestamp() == pytest.approx(300, abs=1)


def test_interrupted_install_is_completed_or_discarded(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    handlers = JoinHandlers(ca)

    def pair() -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = handlers.sign("edge-1", key.public_key(), time.time())
        return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    d = tmp_path / "edge"
    d.mkdir()
    (d / "ca.crt").write_bytes(ca.cert_pem)
    old_cert, old_key = pair()
    (d / "node.crt").write_bytes(old_cert)
    (d / "node.key").write_bytes(old_key)
    # Crashed before the renames: the old pair stays, the leftovers go.
    (d / "node.key.new").write_bytes(b"half")
    (d / "node.crt.new").write_bytes(b"half")
    assert NodeCredentials.load(d).cert == x509.load_pem_x509_certificate(old_cert)
    assert not (d / "node.key.new").exists() and not (d / "node.crt.new").exists()
    # Crashed between the renames: the new key is in place, the new certificate follows it.
    new_cert, new_key = pair()
    (d / "node.key").write_bytes(new_key)
    (d / "node.crt.new").write_bytes(new_cert)
    assert NodeCredentials.load(d).cert == x509.load_pem_x509_certificate(new_cert)


# --- the CLI ------------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORBITER, *args], capture_output=True, text=True, timeout=60)


def test_cli_token_create(cloud_dir: Path, ca: CertificateAuthority, tmp_path: Path) -> None:
    proc = run("token", "create", "--data-dir", str(cloud_dir), "--ttl", "30m")
    assert proc.returncode == 0, proc.stderr
    ca_hash, jwt = parse_token(proc.stdout)
    assert ca_hash == ca_cert_hash(der(ca))
    claims = verify_jwt(jwt, token_signing_key(ca))
    assert claims["exp"] - claims["iat"] == 1800
    assert abs(claims["iat"] - time.time()) < 60

    proc = run("token", "create", "--data-dir", str(cloud_dir))
    claims = verify_jwt(parse_token(proc.stdout)[1], token_signing_key(ca))
    assert claims["exp"] - claims["iat"] == 86400

    proc = run("token", "create", "--data-dir", str(cloud_dir), "--ttl", "soon")
    assert proc.returncode == 2 and "invalid duration" in proc.stderr
    proc = run("token", "create", "--data-dir", str(tmp_path / "nowhere"))
    assert proc.returncode == 1 and "no CA in" in proc.stderr and not proc.stdout
    proc = run("token", "create", "--help")
    assert proc.returncode == 0 and "--ttl" in proc.stdout and "--data-dir" in proc.stdout
    assert "token" in run("--help").stdout
