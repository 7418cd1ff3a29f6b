"""The join endpoint (KubeEdge CloudHub's HTTPS port 10002).

Edge nodes fetch the CA (``GET /ca.crt``), trade a join token and a CSR for a client
certificate (``GET /edge.crt``), later renew that certificate by presenting it over mTLS (the
same endpoint, no token), and ask whether a Node exists (``GET /node/{name}``). The checks live
in ``JoinHandlers``, plain functions of bytes and headers; ``JoinServer`` is the thin HTTPS
transport around them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..apiserver.certificates import CertificateAuthority, serving_hosts
from ..protocol import listening_socket
from ..protocol.tokens import (
    DEFAULT_JOIN_PORT,
    DEFAULT_TOKEN_TTL,
    NODE_CN_PREFIX,
    NODES_GROUP,
    TokenError,
    check_node_name,
    create_token,
    node_common_name,
    signing_key_from_ca_secret,
    verify_jwt,
)

log = logging.getLogger(__name__)

MAX_CSR_BYTES = 64 * 1024  # an unbounded read here was CVE-2022-31075 in KubeEdge
DEFAULT_CERT_DAYS = 365.0
ACCEPTED_CURVES = ("secp256r1", "secp384r1")
# Certificates start a little in the past for clocks running behind, by at most a tenth of
# their lifetime: nodes renew at 70-90 % of notBefore..notAfter, which a full five minutes'
# backdating would put in the past for a short-lived certificate.
_CLOCK_SKEW = dt.timedelta(minutes=5)

IsConnected = Callable[[str], bool]
NodeExists = Callable[[str], Awaitable[bool]]


class JoinRefused(Exception):
    """A request the endpoint refuses: an HTTP status, a Status reason and a message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def load_ca(data_dir: Path) -> CertificateAuthority:
    """The cloud's CA, which must already exist (``orbiter cloud`` creates it)."""
    if not ((data_dir / "ca.crt").is_file() and (data_dir / "ca.key").is_file()):
        raise FileNotFoundError(
            f"no CA in {data_dir} (ca.crt and ca.key): run `orbiter cloud --data-dir "
            f"{data_dir}` once to create it"
        )
    return CertificateAuthority.load_or_create(data_dir)


def token_signing_key(ca: CertificateAuthority) -> bytes:
    size = (ca.key.curve.key_size + 7) // 8
    scalar = ca.key.private_numbers().private_value.to_bytes(size, "big")
    return signing_key_from_ca_secret(scalar)


def create_join_token(
    data_dir: Path, ttl: float = DEFAULT_TOKEN_TTL, now: float | None = None
) -> str:
    """A join token for the cloud whose CA lives in ``data_dir``, valid ``ttl`` seconds."""
    ca = load_ca(data_dir)
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    return create_token(der, token_signing_key(ca), ttl, now)


def _never_connected(_name: str) -> bool:
    return False


async def _no_nodes(_name: str) -> bool:
    return False


class JoinHandlers:
    """What the join endpoint decides, without HTTP: testable with bytes and headers."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        is_connected: IsConnected = _never_connected,
        node_exists: NodeExists = _no_nodes,
        cert_days: float = DEFAULT_CERT_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca = ca
        self.cert_days = cert_days
        self._signing_key = token_signing_key(ca)
        self._is_connected = is_connected
        self._node_exists = node_exists
        self._clock = clock

    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    async def node_exists(self, name: str) -> bool:
        try:
            check_node_name(name)
        except ValueError:
            return False
        return await self._node_exists(name)

    def handle_csr(
        self,
        body: bytes,
        *,
        node_name: str | None,
        authorization: str | None = None,
        peer_cert: x509.Certificate | None = None,
    ) -> bytes:
        """Sign the CSR in ``body`` for ``node_name``; the certificate as PEM, or JoinRefused.

        A bearer token means joining; without one, the node's current client certificate
        (verified by TLS and again here) means renewal.
        """
        if len(body) > MAX_CSR_BYTES:
            raise JoinRefused(413, "RequestEntityTooLarge", _too_large())
        if not node_name:
            raise JoinRefused(400, "BadRequest", "missing the NodeName header")
        try:
            check_node_name(node_name)
        except ValueError as exc:
            raise JoinRefused(400, "BadRequest", str(exc)) from exc
        now = self._clock()
        if authorization is not None:
            self._check_token(authorization, now)
            # Only a node holding no live session may take a name: a second machine must not
            # silently take over a running node's identity.
            if self._is_connected(node_name):
                raise JoinRefused(
                    409,
                    "Conflict",
                    f"node {node_name!r} is connected; another node cannot join under its "
                    "name (pick another name, or stop that node first)",
                )

        elif peer_cert is not None:
            self._check_peer(peer_cert, node_name, now)
        else:
            raise JoinRefused(
                401,
                "Unauthorized",
                "no credentials: send 'Authorization: Bearer <token>' to join, or the "
                "node's current client certificate to renew it",
            )
        public_key = _check_csr(body, node_name)
        cert = self.sign(node_name, public_key, now)
        log.info(
            "issued a certificate for node %s (%s), valid until %s",
            node_name,
            "join" if authorization is not None else "renewal",
            cert.not_valid_after_utc.isoformat(),
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def sign(
        self, node_name: str, public_key: ec.EllipticCurvePublicKey, now: float
    ) -> x509.Certificate:
        start = dt.datetime.fromtimestamp(now, dt.UTC)
        lifetime = dt.timedelta(days=self.cert_days)
        end = min(start + lifetime, self.ca.cert.not_valid_after_utc)
        backdate = min(_CLOCK_SKEW, lifetime / 10)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, node_common_name(node_name)),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODES_GROUP),
            ]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - backdate)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_DIGITAL_SIGNATURE, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()),
                critical=False,
            )
            .sign(self.ca.key, hashes.SHA256())
        )

    def _check_token(self, authorization: str, now: float) -> None:
        scheme, _, jwt = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not jwt.strip():
            raise JoinRefused(401, "Unauthorized", "the Authorization header must be 'Bearer …'")
        try:
            verify_jwt(jwt.strip(), self._signing_key, now)
        except TokenError as exc:
            raise JoinRefused(401, "Unauthorized", str(exc)) from exc

    def _check_peer(self, cert: x509.Certificate, node_name: str, now: float) -> None:
        try:
            cert.verify_directly_issued_by(self.ca.cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise JoinRefused(
                401, "Unauthorized", "the client certificate is not issued by this cloud's CA"
            ) from exc
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise JoinRefused(
                401,
                "Unauthorized",
                f"the client certificate is not valid now (valid until "
                f"{cert.not_valid_after_utc.isoformat()}); join again with a token",
            )
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            raise JoinRefused(
                401, "Unauthorized", "the client certificate is not for client authentication"
            )
        cn, orgs = _subject(cert.subject)
        if orgs != [NODES_GROUP] or not (cn or "").startswith(NODE_CN_PREFIX):
            raise JoinRefused(403, "Forbidden", "the client certificate is not a node's")
        if cn != node_common_name(node_name):
            raise JoinRefused(
                403, "Forbidden", f"the certificate of {cn!r} cannot renew node {node_name!r}"
            )


_DIGITAL_SIGNATURE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _too_large() -> str:
    return f"the certificate signing request is larger than {MAX_CSR_BYTES} bytes"


def _subject(name: x509.Name) -> tuple[str | None, list[str]]:
    cns = [str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = [str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return (cns[0] if len(cns) == 1 else None), orgs


def _check_csr(body: bytes, node_name: str) -> ec.EllipticCurvePublicKey:
    try:
        if body.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(body)
        else:
            csr = x509.load_der_x509_csr(body)
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise JoinRefused(
            400, "BadRequest", f"the body is not a usable certificate signing request: {exc}"
        ) from exc
    if not valid:
        raise JoinRefused(400, "BadRequest", "the CSR's signature does not verify")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in ACCEPTED_CURVES:
        what = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise JoinRefused(
            400, "BadRequest", f"the CSR's key must be ECDSA P-256 or P-384, not {what}"
        )
    cn, orgs = _subject(csr.subject)
    want = node_common_name(node_name)
    if cn != want:
        raise JoinRefused(
            400,
            "BadRequest",
            f"the CSR's common name is {cn!r}; it must be {want!r} (from the NodeName header)",
        )
    if orgs != [NODES_GROUP]:
        raise JoinRefused(
            400, "BadRequest", f"the CSR's organization is {orgs}; it must be [{NODES_GROUP!r}]"
        )
    return key


# --- HTTPS transport --------------------------------------------------------------------------


class JoinServer:
    """``JoinHandlers`` over HTTPS, with a serving certificate issued from the cloud's CA.

    ``port=0`` picks a free port (see ``port`` once started). Client certificates are optional
    at the TLS level (joining nodes have none yet) and checked by the handlers when present.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        listen: str = "127.0.0.1",
        port: int = DEFAULT_JOIN_PORT,
        hosts: Iterable[str] = (),
        is_connected: IsConnected = _never_connected,
        node_exists: NodeExists = _no_nodes,
        cert_days: float = DEFAULT_CERT_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.listen = listen
        self.requested_port = port
        self.hosts = (*serving_hosts(listen), *hosts)
        self.port = 0
        self._is_connected = is_connected
        self._node_exists = node_exists
        self._cert_days = cert_days
        self._clock = clock
        self._handlers: JoinHandlers | None = None
        self._runner: web.AppRunner | None = None

    @property
    def handlers(self) -> JoinHandlers:
        assert self._handlers is not None, "JoinServer is not started"
        return self._handlers

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.listen in ("", "0.0.0.0", "::") else self.listen
        return f"https://[{host}]:{self.port}" if ":" in host else f"https://{host}:{self.port}"

    async def start(self) -> None:
        ca = load_ca(self.data_dir)
        self._handlers = JoinHandlers(
            ca,
            is_connected=self._is_connected,
            node_exists=self._node_exists,
            cert_days=self._cert_days,
            clock=self._clock,
        )
        ssl_ctx = _serving_context(ca, self.data_dir, self.hosts)
        app = web.Application()
        app.router.add_get("/ca.crt", self._get_ca)
        app.router.add_route("GET", "/edge.crt", self._edge_crt)
        app.router.add_route("POST", "/edge.crt", self._edge_crt)
        app.router.add_get("/node/{name}", self._get_node)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        try:
            sock = listening_socket(self.listen, self.requested_port)
            self.port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock, ssl_context=ssl_ctx).start()
        except BaseException:
            await self.stop()
            raise
        log.info("join endpoint listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is None:
            return
        server = self._runner.server
        transports = [h.transport for h in (server.connections if server else []) if h.transport]
        await self._runner.cleanup()
        # As in APIServer.stop: a TLS close waits for the peer's close_notify; drop leftovers.
        for transport in transports:
            transport.abort()
        self._runner = None

    async def __aenter__(self) -> JoinServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _get_ca(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.handlers.ca_pem(), content_type="application/x-pem-file")

    async def _get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if await self.handlers.node_exists(name):
            return web.json_response({"kind": "Status", "status": "Success", "code": 200})
        return _refusal(JoinRefused(404, "NotFound", f"node {name!r} not found"))

    async def _edge_crt(self, request: web.Request) -> web.Response:
        node_name = request.headers.get("NodeName")
        try:
            body = await _read_capped(request, MAX_CSR_BYTES)
            authorization = request.headers.get("Authorization")
            # A token is shared: a Node that exists renews with its own certificate. Joining
            # over it would hand its pods and Secrets to whoever holds the token.
            if (
                authorization is not None
                and node_name
                and await self.handlers.node_exists(node_name)
            ):
                raise JoinRefused(
                    409,
                    "Conflict",
                    f"node {node_name!r} already exists; it renews with its own certificate "
                    "(to join a new machine under this name, delete the Node first)",
                )
            pem = self.handlers.handle_csr(
                body,
                node_name=node_name,
                authorization=authorization,
                peer_cert=_peer_certificate(request),
            )
        except JoinRefused as refused:
            log.warning("refused a certificate for node %r: %s", node_name, refused.message)
            return _refusal(refused)
        return web.Response(body=pem, content_type="application/x-pem-file")


def _refusal(refused: JoinRefused) -> web.Response:
    return web.json_response(refused.status(), status=refused.code)


async def _read_capped(request: web.Request, cap: int) -> bytes:
    if request.content_length is not None and request.content_length > cap:
        raise JoinRefused(413, "RequestEntityTooLarge", _too_large())
    data = bytearray()
    while chunk := await request.content.read(cap + 1 - len(data)):
        data += chunk
        if len(data) > cap:  # chunked bodies announce no length
            raise JoinRefused(413, "RequestEntityTooLarge", _too_large())
    return bytes(data)


def _peer_certificate(request: web.Request) -> x509.Certificate | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def _serving_context(
    ca: CertificateAuthority, data_dir: Path, hosts: tuple[str, ...]
) -> ssl.SSLContext:
    """TLS for the endpoint: a serving certificate issued afresh from the CA on each start."""
    cert, key = ca.issue("orbiter-cloudhub", hosts=tuple(dict.fromkeys(hosts)), server=True)
    assert key is not None
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    crt_path, key_path = data_dir / "cloudhub.crt", data_dir / "cloudhub.key"
    _replace(key_path, key_pem)
    _replace(crt_path, cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca.cert_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(crt_path, key_path)
    ctx.verify_mode = ssl.CERT_OPTIONAL  # joining nodes have no certificate yet
    return ctx


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp creates it 0600
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
