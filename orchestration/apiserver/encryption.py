"""Encryption at rest for Secrets: AES-GCM, the key in the data dir (like kube-apiserver's
``aesgcm`` provider). Stored values carry a prefix naming the provider and key, so plain
values written before encryption was on still read back."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_PREFIX = b"k8s:enc:aesgcm:v1:"
_NONCE = 12


class EncryptionError(Exception):
    pass


class AESGCMTransformer:
    def __init__(self, key: bytes, name: str = "key1") -> None:
        if len(key) not in (16, 24, 32):
            raise EncryptionError("an AES-GCM key is 16, 24 or 32 bytes")
        self._aead = AESGCM(key)
        self._prefix = _PREFIX + name.encode() + b":"

    @classmethod
    def from_data_dir(cls, data_dir: Path) -> AESGCMTransformer:
        """Load the key from ``DIR/encryption.key``, creating it (mode 0600) on first start."""
        path = data_dir / "encryption.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        key = path.read_bytes()
        return cls(key)

    def encrypt(self, plain: bytes, context: bytes) -> bytes:
        # The storage key is the associated data: a ciphertext copied under another key fails.
        nonce = secrets.token_bytes(_NONCE)
        return self._prefix + nonce + self._aead.encrypt(nonce, plain, context)

    def decrypt(self, stored: bytes, context: bytes) -> bytes:
        if not stored.startswith(_PREFIX):
            return stored  # written before encryption was enabled
        if not stored.startswith(self._prefix):
            raise EncryptionError("value was encrypted with an unknown key")
        body = stored[len(self._prefix) :]
        try:
            return self._aead.decrypt(body[:_NONCE], body[_NONCE:], context)
        except Exception as exc:  # InvalidTag carries no message
            raise EncryptionError("stored value failed authentication") from exc
