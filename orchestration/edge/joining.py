"""Joining the cloud, and keeping the node's client certificate fresh afterwards.

As KubeEdge's edgehub certificate manager: fetch the CA unverified and check it against the hash
in the join token, trade the token and a CSR for a client certificate, then renew that
certificate over mTLS at a jittered 70-90 % of its lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import random
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from ..protocol.tokens import (
    DEFAULT_JOIN_PORT,
    NODE_CN_PREFIX,
    NODES_GROUP,
    ca_cert_hash,
    check_node_name,
    node_common_name,
    parse_token,
)

log = logging.getLogger(__name__)

CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "node.crt", "node.key"
MAX_RESPONSE_BYTES = 64 * 1024
REQUEST_TIMEOUT = 30.0  # per request; wrap join() in asyncio.timeout() for an overall bound
# KubeEdge's renewal back-off: 2 s doubling for 5 steps, then every 32 s.
BACKOFF = (2.0, 4.0, 8.0, 16.0, 32.0)

OnRotated = Callable[["NodeCredentials"], Awaitable[None] | None]


class JoinError(Exception):
    """Joining or renewing failed; ``status`` is the cloud's HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NodeCredentials:
    """The node's CA, client certificate and key, as stored in its data dir."""

    data_dir: Path
    node_name: str
    ca_pem: bytes
    cert: x509.Certificate

    @classmethod
    def load(cls, data_dir: Path) -> NodeCredentials:
        data_dir = Path(data_dir)
        _recover(data_dir)
        ca_pem = (data_dir / CA_FILE).read_bytes()
        cert = x509.load_pem_x509_certificate((data_dir / CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((data_dir / KEY_FILE).read_bytes(), None)
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise ValueError(f"{data_dir / KEY_FILE} is not the key of {data_dir / CERT_FILE}")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(cns[0].value) if cns else ""
        if not cn.startswith(NODE_CN_PREFIX):
            raise ValueError(f"{data_dir / CERT_FILE} is not a node certificate (CN {cn!r})")
        return cls(data_dir, cn.removeprefix(NODE_CN_PREFIX), ca_pem, cert)

    @property
    def ca_path(self) -> Path:
        return self.data_dir / CA_FILE

    @property
    def cert_path(self) -> Path:
        return self.data_dir / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.data_dir / KEY_FILE

    @property
    def ca_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_pem)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: verifies the cloud against our CA and presents the node cert."""
        ctx = _verifying_context(self.ca_pem)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


def cloud_url(cloud: str) -> URL:
    """``HOST[:PORT]`` or ``https://HOST[:PORT]`` → the join endpoint's base URL."""
    url = URL(cloud if "://" in cloud else f"https://{cloud}")
    if url.scheme != "https" or not url.host:
        raise ValueError(f"cloud address must be HOST[:PORT] or https://HOST[:PORT]: {cloud!r}")
    if url.explicit_port is None:
        url = url.with_port(DEFAULT_JOIN_PORT)
    return url.with_path("/")


async def join(cloud: str, token: str, name: str, data_dir: Path) -> NodeCredentials:
    """Join the cloud at ``cloud`` as node ``name``; store ca.crt, node.crt, node.key."""
    try:
        check_node_name(name)
        ca_hash, jwt = parse_token(token)
    except ValueError as exc:
        raise JoinError(str(exc)) from exc
    base = cloud_url(cloud)
    # Nothing to verify the server with yet: the CA is checked against the token instead.
    status, body = await _fetch(base / "ca.crt", False)
    if status != 200:
        raise JoinError(f"{base} did not serve its CA ({status}): {_message(body)}", status)
    try:
        ca_cert = x509.load_pem_x509_certificate(body)
    except ValueError as exc:
        raise JoinError(f"{base}ca.crt is not a PEM certificate") from exc
    served = ca_cert_hash(ca_cert.public_bytes(serialization.Encoding.DER))
    if not hmac.compare_digest(served, ca_hash):
        raise JoinError(
            f"CA certificate hash does not match the token: the token expects {ca_hash}, "
            f"{base} serves {served} — wrong cloud or a forged token"
        )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _replace(data_dir / CA_FILE, ca_pem, 0o644)
    cert_pem, key_pem = await _request_certificate(
        base, name, ca_cert, _verifying_context(ca_pem), {"Authorization": f"Bearer {jwt}"}
    )
    _install(data_dir, cert_pem, key_pem)
    log.info("joined %s as node %s", base, name)
    return NodeCredentials.load(data_dir)


class CertificateRotator:
    """Renews the node certificate at a jittered 70-90 % of its lifetime, over mTLS.

    ``clock``, ``rand`` and ``sleep`` are injectable so tests need not wait; long waits are cut
    into ``max_sleep`` slices so a suspended device or a changed wall clock is noticed.
    """

    def __init__(
        self,
        credentials: NodeCredentials,
        cloud: str,
        *,
        on_rotated: OnRotated | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep: float = 3600.0,
    ) -> None:
        self._credentials = credentials
        self._base = cloud_url(cloud)
        self._on_rotated = on_rotated
        self._clock = clock
        self._rand = rand
        self._sleep = sleep
        self._max_sleep = max_sleep
        self._jitter: tuple[int, float] | None = None  # (serial, fraction), drawn once per cert
        self._task: asyncio.Task[None] | None = None

    @property
    def credentials(self) -> NodeCredentials:
        return self._credentials

    def deadline(self) -> float:
        """When the current certificate is due for renewal (Unix time)."""
        cert = self._credentials.cert
        if self._jitter is None or self._jitter[0] != cert.serial_number:
            self._jitter = (cert.serial_number, 0.7 + 0.2 * self._rand())
        return cert.not_valid_before_utc.timestamp() + self._lifetime() * self._jitter[1]

    def _lifetime(self) -> float:
        cert = self._credentials.cert
        return cert.not_valid_after_utc.timestamp() - cert.not_valid_before_utc.timestamp()

    async def rotate(self) -> NodeCredentials:
        """One renewal attempt: a new key, a CSR sent over mTLS with the current cert."""
        creds = self._credentials
        cert_pem, key_pem = await _request_certificate(
            self._base, creds.node_name, creds.ca_cert, creds.ssl_context(), {}
        )
        _install(creds.data_dir, cert_pem, key_pem)
        self._credentials = NodeCredentials.load(creds.data_dir)
        log.info(
            "renewed the certificate of node %s; valid until %s",
            creds.node_name,
            self._credentials.cert.not_valid_after_utc.isoformat(),
        )
        return self._credentials

    async def run(self) -> None:
        renewed: float | None = None
        while True:
            when = self.deadline()
            if renewed is not None:
                # A certificate renewed past its own deadline (a signer backdating it by more
                # than its lifetime allows) must not make us renew in a tight loop.
                when = max(when, renewed + self._lifetime() / 10)
            while (remaining := when - self._clock()) > 0:
                await self._sleep(min(remaining, self._max_sleep))
            creds = await self._rotate_with_backoff()
            renewed = self._clock()
            if self._on_rotated is not None:
                try:
                    result = self._on_rotated(creds)
                    if result is not None:
                        await result
                except Exception:
                    log.exception("on_rotated callback failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="certificate-rotator")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> CertificateRotator:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _rotate_with_backoff(self) -> NodeCredentials:
        attempt = 0
        while True:
            try:
                return await self.rotate()
            except Exception as exc:
                delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                attempt += 1
                expired = self._clock() > self._credentials.cert.not_valid_after_utc.timestamp()
                log.log(
                    logging.ERROR if expired else logging.WARNING,
                    "renewing the certificate of node %s failed (%s)%s; retrying in %.0f s",
                    self._credentials.node_name,
                    exc,
                    "; it has expired: join again with a new token" if expired else "",
                    delay,
                )
                await self._sleep(delay)


async def _request_certificate(
    base: URL,
    name: str,
    ca_cert: x509.Certificate,
    ssl_ctx: ssl.SSLContext,
    headers: dict[str, str],
) -> tuple[bytes, bytes]:
    """Send a fresh key's CSR to /edge.crt; (certificate PEM, key PEM) once checked."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, node_common_name(name)),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODES_GROUP),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    headers = {**headers, "NodeName": name, "Content-Type": "application/x-pem-file"}
    status, body = await _fetch(
        base / "edge.crt", ssl_ctx, csr.public_bytes(serialization.Encoding.PEM), headers
    )
    if status != 200:
        raise JoinError(f"the cloud refused the certificate ({status}): {_message(body)}", status)
    try:
        cert = x509.load_pem_x509_certificate(body)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise JoinError(f"the cloud answered with an unusable certificate: {exc}") from exc
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise JoinError("the cloud's certificate is not for the key we sent")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def _fetch(
    url: URL,
    ssl_ctx: ssl.SSLContext | bool,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    # KubeEdge's protocol is a GET with the CSR as its body.
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session,
            session.get(url, data=data, headers=headers, ssl=ssl_ctx) as resp,
        ):
            body = bytearray()
            while chunk := await resp.content.read(MAX_RESPONSE_BYTES + 1 - len(body)):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise JoinError(f"{url} answered more than {MAX_RESPONSE_BYTES} bytes")
            return resp.status, bytes(body)
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
        raise JoinError(f"cannot reach {url}: {exc or type(exc).__name__}") from exc


def _message(body: bytes) -> str:
    try:
        status = json.loads(body)
    except ValueError:
        return body[:500].decode(errors="replace")
    message = status.get("message") if isinstance(status, dict) else None
    if isinstance(message, str):
        return message
    return body[:500].decode(errors="replace")


def _verifying_context(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey), "node keys are ECDSA"
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# The key and certificate must change together, and two renames are not one atomic step:
# both are written as *.new first, the key renamed, then the certificate. A crash between the
# renames leaves only node.crt.new, which _recover() installs; a crash before leaves the old
# pair intact and the *.new files are dropped.
def _install(data_dir: Path, cert_pem: bytes, key_pem: bytes) -> None:
    key_new, crt_new = data_dir / f"{KEY_FILE}.new", data_dir / f"{CERT_FILE}.new"
    _replace(key_new, key_pem, 0o600)
    _replace(crt_new, cert_pem, 0o644)
    os.replace(key_new, data_dir / KEY_FILE)
    os.replace(crt_new, data_dir / CERT_FILE)
    _fsync_dir(data_dir)


def _recover(data_dir: Path) -> None:
    key_new, crt_new = data_dir / f"{KEY_FILE}.new", data_dir / f"{CERT_FILE}.new"
    if crt_new.exists() and not key_new.exists():
        os.replace(crt_new, data_dir / CERT_FILE)
    else:
        key_new.unlink(missing_ok=True)
        crt_new.unlink(missing_ok=True)


def _replace(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
