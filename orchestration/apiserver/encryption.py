"""Encryption at rest for Secrets: AES-GCM, the key in the data dir (like kube-apiserver's
``aesgcm`` provider). Stored values carry a prefix naming the provider and key, so plain
values written before encryption was on still read back."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .files import write_private

_PREFIX = b"k8s:enc:aesgcm:v1:"
_NONCE = 12


class EncryptionError(Exception):
    pass


class AESGCMTransformer:
    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise EncryptionError("an AES-GCM key is 16, 24 or 32 bytes")
        self._aead = AESGCM(key)
        # The key's fingerprint names it, so a value written under another key (another
        # replica's, a replaced file) is reported as such rather than as corruption.
        self.key_id = hashlib.sha256(key).hexdigest()[:12]
        self._prefix = _PREFIX + self.key_id.encode() + b":"

    @classmethod
    def from_file(cls, path: Path) -> AESGCMTransformer:
        """Load the key from ``path``, creating it (32 random bytes, mode 0600) if absent.

        Replicas sharing one database must share this file (``--encryption-key-file``).
        """
        if not path.exists():
            write_private(path, secrets.token_bytes(32))
        return cls(path.read_bytes())

    def encrypt(self, plain: bytes, context: bytes) -> bytes:
        # The storage key is the associated data: a ciphertext copied under another key fails.
        nonce = secrets.token_bytes(_NONCE)
        return self._prefix + nonce + self._aead.encrypt(nonce, plain, context)

    def decrypt(self, stored: bytes, context: bytes) -> bytes:
        if not stored.startswith(_PREFIX):
            return stored  # written before encryption was enabled
        if not stored.startswith(self._prefix):
            other = stored[len(_PREFIX) :].split(b":", 1)[0].decode(errors="replace")
            raise EncryptionError(
                f"value was encrypted with key {other}, but this server has key {self.key_id}: "
                "replicas sharing a store must share --encryption-key-file"
            )
        body = stored[len(self._prefix) :]
        try:
            return self._aead.decrypt(body[:_NONCE], body[_NONCE:], context)
        except Exception as exc:  # InvalidTag carries no message
            raise EncryptionError("stored value failed authentication") from exc
