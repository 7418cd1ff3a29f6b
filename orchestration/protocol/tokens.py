"""What edge and cloud share for joining: the token format, node identities, the port.

A join token is ``<hex SHA-256 of the CA certificate DER>.<JWT>``, as KubeEdge has it: the hash
lets a joining node check the CA it downloads before trusting it, the JWT (HS256, ``exp``,
``iat``, ``jti``) proves the holder was given the token by the cloud's administrator.

KubeEdge signs the JWT with the CA private key's bytes. Here the HMAC key is derived from the
CA private key instead (``signing_key_from_ca_secret``): HMAC-SHA256 keyed with a
domain-separation label over the 32-byte private scalar, so the token key is never the CA key
itself and does not depend on how the key file happens to be encoded (PEM, PKCS#8 or SEC1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from typing import Any

DEFAULT_JOIN_PORT = 10002  # CloudHub's HTTPS port in KubeEdge
DEFAULT_TOKEN_TTL = 24 * 3600.0
MAX_TOKEN_LENGTH = 2048  # a real token is about 260 characters
TOKEN_KEY_LABEL = b"orbiter join-token signing key v1"

NODE_CN_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"

_HEADER = {"alg": "HS256", "typ": "JWT"}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
# A Node name is a DNS-1123 subdomain, as in Kubernetes.
_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class TokenError(ValueError):
    """A join token that cannot be used; the message says why."""


class TokenInvalid(TokenError):
    """Malformed, or its signature does not verify."""


class TokenExpired(TokenError):
    """Well-formed and genuine, but past its ``exp``."""


# --- node identity -------------------------------------------------------------------------


def check_node_name(name: str) -> str:
    """Return ``name`` if it is a valid Node name, else raise ValueError saying why."""
    if not name:
        raise ValueError("node name is empty")
    if len(name) > 253 or not _NODE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid node name {name[:64]!r}: must be a DNS-1123 subdomain (lower-case "
            "letters, digits, '-' and '.', at most 253 characters)"
        )
    return name


def node_common_name(name: str) -> str:
    return NODE_CN_PREFIX + name


# --- tokens ---------------------------------------------------------------------------------


def ca_cert_hash(ca_cert_der: bytes) -> str:
    return hashlib.sha256(ca_cert_der).hexdigest()


def signing_key_from_ca_secret(ca_private_scalar: bytes) -> bytes:
    """The JWT's HMAC key, derived from the CA private key's scalar (big-endian bytes)."""
    return hmac.new(TOKEN_KEY_LABEL, ca_private_scalar, hashlib.sha256).digest()


def create_token(
    ca_cert_der: bytes,
    signing_key: bytes,
    ttl: float = DEFAULT_TOKEN_TTL,
    now: float | None = None,
) -> str:
    if ttl <= 0:
        raise ValueError(f"token lifetime must be positive, not {ttl}")
    issued = time.time() if now is None else now
    claims = {"exp": int(issued + ttl), "iat": int(issued), "jti": secrets.token_hex(16)}
    signing_input = _b64encode(_json(_HEADER)) + "." + _b64encode(_json(claims))
    return f"{ca_cert_hash(ca_cert_der)}.{signing_input}.{_sign(signing_key, signing_input)}"


def parse_token(token: str) -> tuple[str, str]:
    """Split a join token into (CA hash, JWT); ValueError (TokenInvalid) if malformed."""
    token = token.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid(f"malformed token: longer than {MAX_TOKEN_LENGTH} characters")
    ca_hash, dot, jwt = token.partition(".")
    if not dot or jwt.count(".") != 2:
        raise TokenInvalid(
            "malformed token: expected <CA hash>.<header>.<claims>.<signature> (4 parts)"
        )
    if not _HEX_SHA256.fullmatch(ca_hash):
        raise TokenInvalid("malformed token: the first part is not a hex SHA-256 hash")
    return ca_hash, jwt


def verify_jwt(jwt: str, signing_key: bytes, now: float | None = None) -> dict[str, Any]:
    """Return the claims of a genuine, unexpired JWT; raise TokenInvalid or TokenExpired."""
    if len(jwt) > MAX_TOKEN_LENGTH:
        raise TokenInvalid(f"malformed token: longer than {MAX_TOKEN_LENGTH} characters")
    parts = jwt.split(".")
    if len(parts) != 3:
        raise TokenInvalid("malformed token: a JWT has 3 dot-separated parts")
    header_b64, claims_b64, signature = parts
    header = _decode_object(header_b64, "header")
    # Only HS256: a token must not choose its own algorithm ("none", or RS256 keyed by us).
    if header.get("alg") != "HS256":
        raise TokenInvalid(f"malformed token: algorithm {header.get('alg')!r} is not HS256")
    _b64decode(signature, "signature")
    expected = _sign(signing_key, f"{header_b64}.{claims_b64}")
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise TokenInvalid("token signature does not verify (forged or from another cloud)")
    claims = _decode_object(claims_b64, "claims")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
        raise TokenInvalid("malformed token: claim 'exp' missing or not a number")
    current = time.time() if now is None else now
    if current >= exp:
        expired_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
        raise TokenExpired(f"token expired at {expired_at}; create a new one")
    return claims


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _sign(key: bytes, signing_input: str) -> str:
    return _b64encode(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str, what: str) -> bytes:
    # Strict: the stdlib decoder silently skips characters outside the alphabet.
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenInvalid(f"malformed token: the {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenInvalid(f"malformed token: the {what} is not base64url") from exc


def _decode_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(text, what))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise TokenInvalid(f"malformed token: the {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenInvalid(f"malformed token: the {what} is not a JSON object")
    return value
