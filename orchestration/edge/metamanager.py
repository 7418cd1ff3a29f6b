"""MetaManager: the node's durable copy of every object the cloud sent (kubeedge.md §3.1-3.3).

Objects live in the revisioned store under KubeEdge's ``meta`` keys, the wire resource string
``<namespace>/<type>/<name>`` (``null`` namespace for cluster-scoped objects), as JSON. A
downstream ``insert``/``update``/``patch`` upserts, ``delete`` removes, and the ACK
(``response "OK"``) is returned only once the write has committed: an ACK the cloud receives
means the object survives a crash, so the cloud may stop resending it.

Secrets and service-account tokens are sealed with AES-GCM when a node key is given
(``load_or_create_key``); everything else is stored as sent.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..protocol import (
    DELETE,
    ERROR,
    INSERT,
    KEEPALIVE,
    PATCH,
    RESPONSE,
    UPDATE,
    Message,
    MessageError,
    parse_resource,
    resource_path,
)
from ..store import Event, KeyExistsError, KeyNotFoundError, RevisionMismatchError, Store

__all__ = [
    "SEALED_TYPES",
    "Change",
    "MetaManager",
    "SecretsError",
    "Snapshot",
    "load_or_create_key",
]

log = logging.getLogger(__name__)

SOURCE = "metamanager"
SEALED_TYPES = frozenset({"secret", "serviceaccounttoken"})  # encrypted at rest when keyed
_UPSERTS = frozenset({INSERT, UPDATE, PATCH})
_REPLIES = frozenset({RESPONSE, ERROR, KEEPALIVE})  # answering a reply would ping-pong
_TYPE = re.compile(r"[a-z0-9]{1,63}")
_NAME = re.compile(r"[\x21-\x2e\x30-\x7e]{1,253}")  # printable ASCII but "/"
_CAS_ATTEMPTS = 20  # concurrent writers of one key; each retry means another write committed
_SEAL_PREFIX = b"orbiter:edge:aesgcm:v1:"
_NONCE = 12


class SecretsError(Exception):
    """A sealed value cannot be opened: no key, another node's key, or corruption."""


class _Malformed(Exception):
    """A downstream message this node refuses; the text goes back in the ``error`` reply."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Objects of one type as of the local store ``revision`` (a list's resourceVersion)."""

    items: list[dict[str, Any]]
    revision: int


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of a stored object, at local store ``revision``.

    ``object`` is the new value (for DELETED: the last one), ``previous`` the value it
    replaced (MODIFIED only). Both are shared between watchers: treat them as read-only.
    """

    type: Literal["ADDED", "MODIFIED", "DELETED"]
    namespace: str | None
    kind: str  # the KubeEdge resource type: pod, configmap, ...
    name: str
    object: dict[str, Any]
    previous: dict[str, Any] | None
    revision: int


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """The node's secret-sealing key at ``path``, created (32 random bytes, mode 0600) if
    absent. Losing it loses nothing for good: the cloud resends what cannot be opened."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)  # whole or not at all: a crash never leaves half a key
    key = path.read_bytes()
    if len(key) != 32:
        raise SecretsError(f"{path} does not hold a 32-byte key; remove it to make a new one")
    return key


class _Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        key_id = hashlib.sha256(key).hexdigest()[:12].encode()
        self._prefix = _SEAL_PREFIX + key_id + b":"

    def seal(self, plain: bytes, store_key: str) -> bytes:
        # The store key is the associated data: a ciphertext copied under another key fails.
        nonce = secrets.token_bytes(_NONCE)
        return self._prefix + nonce + self._aead.encrypt(nonce, plain, store_key.encode())

    def open(self, stored: bytes, store_key: str) -> bytes:
        if not stored.startswith(self._prefix):
            raise SecretsError(f"{store_key} was sealed with another node key")
        body = stored[len(self._prefix) :]
        try:
            return self._aead.decrypt(body[:_NONCE], body[_NONCE:], store_key.encode())
        except Exception as exc:  # InvalidTag carries no message
            raise SecretsError(f"{store_key} failed authentication") from exc


def _split_key(key: str) -> tuple[str | None, str, str] | None:
    parts = key.split("/")
    if len(parts) != 3 or not all(parts):
        return None  # not one of ours (the store may be shared with other edge modules)
    return (None if parts[0] == "null" else parts[0]), parts[1], parts[2]


def _rv(obj: dict[str, Any] | None) -> int | None:
    meta = obj.get("metadata") if obj else None
    return _numeric(meta.get("resourceVersion") if isinstance(meta, dict) else None)


def _numeric(rv: Any) -> int | None:
    """KubeEdge compares resourceVersions as unsigned integers; anything else is opaque."""
    return int(rv) if isinstance(rv, str) and rv.isascii() and rv.isdigit() else None


def _uid(obj: Any) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    uid = meta.get("uid") if isinstance(meta, dict) else None
    return uid if isinstance(uid, str) else ""


class MetaManager:
    """Applies the cloud's downstream resource messages to ``store`` and reads them back.

    ``secret_key`` (32 bytes, see ``load_or_create_key``) seals ``SEALED_TYPES`` at rest;
    without it they are stored in plain JSON. The store's lifecycle stays with the caller.
    """

    def __init__(self, store: Store, *, secret_key: bytes | None = None) -> None:
        self.store = store
        self._sealer = _Sealer(secret_key) if secret_key is not None else None

    # -- downstream messages -----------------------------------------------------------------

    async def handle(self, message: Message) -> Message | None:
        """Apply one downstream message; the reply to send upstream, or None for replies.

        ``response "OK"`` only after the write committed (or when there was nothing to
        write: the same message twice is harmless); ``error`` with the reason, and nothing
        changed, for a message this node cannot apply.
        """
        if message.operation in _REPLIES:
            return None
        try:
            if message.operation in _UPSERTS:
                key, kind, obj = self._check_upsert(message)
                await self._upsert(key, kind, obj)
            elif message.operation == DELETE:
                key = self._check_delete(message)
                await self._delete(key, message.content)
            else:
                raise _Malformed(f"{SOURCE} does not apply operation {message.operation!r}")
        except _Malformed as exc:
            log.warning("refused %s %s: %s", message.operation, message.resource, exc)
            return message.error(str(exc), source=SOURCE)
        except Exception as exc:  # a store failure: no ACK, so the cloud resends later
            log.exception("could not apply %s %s", message.operation, message.resource)
            return message.error(f"could not store {message.resource}: {exc}", source=SOURCE)
        return message.response("OK", source=SOURCE)

    @staticmethod
    def _target(message: Message) -> tuple[str | None, str, str]:
        try:
            namespace, kind, name = parse_resource(message.resource)
        except MessageError as exc:
            raise _Malformed(str(exc)) from None
        if not name:
            raise _Malformed(f"resource {message.resource!r} is not <namespace>/<type>/<name>")
        if not _TYPE.fullmatch(kind):
            raise _Malformed(f"resource type {kind!r} is not a lowercase KubeEdge type")
        if not _NAME.fullmatch(name):
            raise _Malformed(f"resource name {name!r} is not a valid object name")
        if namespace is not None and not _NAME.fullmatch(namespace):
            raise _Malformed(f"namespace {namespace!r} is not a valid namespace name")
        return namespace, kind, name

    def _check_upsert(self, message: Message) -> tuple[str, str, dict[str, Any]]:
        namespace, kind, name = self._target(message)
        obj = message.content
        if not isinstance(obj, dict):
            raise _Malformed(f"{message.operation} content must be an object")
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise _Malformed("content.metadata must be an object")
        self._check_identity(meta, namespace, name)
        if namespace is not None and not meta.get("namespace"):
            obj = {**obj, "metadata": {**meta, "namespace": namespace}}  # as the API shows it
        if _rv(obj) is None and _numeric(message.resource_version) is not None:
            obj = {
                **obj,
                "metadata": {**obj["metadata"], "resourceVersion": message.resource_version},
            }
        return resource_path(namespace, kind, name), kind, obj

    def _check_delete(self, message: Message) -> str:
        namespace, kind, name = self._target(message)
        content = message.content
        if content is not None and not isinstance(content, dict):
            raise _Malformed("delete content must be the object (or a stub of it) or null")
        meta = content.get("metadata") if content else None
        if meta is not None:
            if not isinstance(meta, dict):
                raise _Malformed("content.metadata must be an object")
            self._check_identity(meta, namespace, name)
        return resource_path(namespace, kind, name)

    @staticmethod
    def _check_identity(meta: dict[str, Any], namespace: str | None, name: str) -> None:
        if meta.get("name") != name:
            raise _Malformed(
                f"content names {meta.get('name')!r} but the resource path names {name!r}"
            )
        content_ns = meta.get("namespace") or None
        if content_ns is not None and content_ns != namespace:
            raise _Malformed(
                f"content is in namespace {content_ns!r} but the resource path in "
                f"{namespace or 'null'!r}"
            )

    async def _upsert(self, key: str, kind: str, obj: dict[str, Any]) -> None:
        value = self._encode(key, kind, obj)
        incoming = _rv(obj)
        for _ in range(_CAS_ATTEMPTS):
            current = await self.store.get(key)
            if current is None:
                with contextlib.suppress(KeyExistsError):
                    await self.store.create(key, value)
                    return
                continue
            try:
                stored: dict[str, Any] | None = self._decode(key, kind, current.value)
            except (SecretsError, ValueError):
                stored = None  # unreadable here: the cloud's copy replaces it
            if stored == obj:
                return  # a resend of what is stored: nothing to write, no watch event
            # The cloud orders deliveries (newest resourceVersion per object wins, ObjectSync),
            # but a resend can still overtake a newer message across a reconnect. A numerically
            # older RV never rolls the stored object back; cloud RVs are global store
            # revisions, so this holds across a delete and re-create of the name too.
            current_rv = _rv(stored)
            if incoming is not None and current_rv is not None and incoming < current_rv:
                log.info("ignored %s at resourceVersion %d < stored %d", key, incoming, current_rv)
                return
            with contextlib.suppress(RevisionMismatchError, KeyNotFoundError):
                await self.store.update(key, value, current.mod_revision)
                return
        raise RuntimeError(f"{key} kept changing under {_CAS_ATTEMPTS} attempts to write it")

    async def _delete(self, key: str, stub: Any) -> None:
        kind = key.split("/")[1]
        for _ in range(_CAS_ATTEMPTS):
            current = await self.store.get(key)
            if current is None:
                return  # already gone: a repeated delete is an ACKed no-op
            gone_uid = _uid(stub)
            if gone_uid:
                try:
                    stored_uid = _uid(self._decode(key, kind, current.value))
                except (SecretsError, ValueError):
                    stored_uid = ""
                if stored_uid and stored_uid != gone_uid:
                    # KubeEdge's rule for pods, kept for all: the delete is of an older
                    # incarnation of the name; the one stored is newer and stays.
                    return
            with contextlib.suppress(RevisionMismatchError, KeyNotFoundError):
                await self.store.delete(key, current.mod_revision)
                return
        raise RuntimeError(f"{key} kept changing under {_CAS_ATTEMPTS} attempts to delete it")

    # -- encoding ----------------------------------------------------------------------------

    def _encode(self, key: str, kind: str, obj: dict[str, Any]) -> bytes:
        raw = orjson.dumps(obj)
        if self._sealer is not None and kind in SEALED_TYPES:
            return self._sealer.seal(raw, key)
        return raw

    def _decode(self, key: str, kind: str, value: bytes) -> dict[str, Any]:
        if value.startswith(_SEAL_PREFIX):
            if self._sealer is None:
                raise SecretsError(f"{key} is sealed and this MetaManager has no node key")
            value = self._sealer.open(value, key)
        obj = orjson.loads(value)
        if not isinstance(obj, dict):
            raise ValueError(f"{key} does not hold a JSON object")
        return obj

    # -- reads -------------------------------------------------------------------------------

    async def get(self, namespace: str | None, kind: str, name: str) -> dict[str, Any] | None:
        key = resource_path(namespace, kind, name)
        kv = await self.store.get(key)
        return None if kv is None else self._decode(key, kind, kv.value)

    async def snapshot(self, kind: str, namespace: str | None = None) -> Snapshot:
        """Every object of ``kind`` (in ``namespace``, or everywhere when None, cluster-scoped
        ones included) at one consistent local revision, ordered by key."""
        prefix = f"{namespace}/{kind}/" if namespace else ""
        result = await self.store.list(prefix)
        items = []
        for kv in result.kvs:
            parts = _split_key(kv.key)
            if parts is not None and parts[1] == kind:
                items.append(self._decode(kv.key, kind, kv.value))
        return Snapshot(items, result.revision)

    async def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return (await self.snapshot(kind, namespace)).items

    async def pods_for_node(self, node_name: str | None = None) -> builtins.list[dict[str, Any]]:
        """The pods to run after a restart, cloud or no cloud (kubeedge.md §3.3 step 2).

        The cloud only sends a node its own pods; ``node_name`` additionally drops any whose
        ``spec.nodeName`` says otherwise.
        """
        pods = await self.list("pod")
        if node_name is None:
            return pods
        return [p for p in pods if (p.get("spec") or {}).get("nodeName") in (None, node_name)]

    async def revision(self) -> int:
        return await self.store.current_revision()

    async def compacted_revision(self) -> int:
        return await self.store.compacted_revision()

    async def compact(self, keep: int = 1000) -> int:
        """Drop history older than the last ``keep`` revisions (every write appends a row)."""
        current = await self.store.current_revision()
        return await self.store.compact(max(0, current - keep))

    async def watch(
        self, kind: str | None = None, namespace: str | None = None, *, after: int = 0
    ) -> AsyncGenerator[Change, None]:
        """Changes after local revision ``after`` (replayed, then live) of ``kind`` (all types
        when None) in ``namespace`` (everywhere when None). Ends when the store closes; raises
        the store's CompactedError for an ``after`` older than its history."""
        prefix = (
            f"{namespace}/{kind}/" if namespace and kind else f"{namespace}/" if namespace else ""
        )
        events = self.store.watch(prefix, after)
        try:
            async for event in events:
                change = self._change(event, kind)
                if change is not None:
                    yield change
        finally:
            aclose = getattr(events, "aclose", None)  # the contract promises an iterator only
            if aclose is not None:
                await aclose()

    def _change(self, event: Event, kind: str | None) -> Change | None:
        parts = _split_key(event.kv.key)
        if parts is None or (kind is not None and parts[1] != kind):
            return None
        # Decoded once per event for all watchers (the store shares events between them).
        change: Change | None = event.memo.get("edge:change")
        if change is None:
            namespace, k, name = parts
            try:
                obj = self._decode(event.kv.key, k, event.kv.value)
                prev = None
                if event.type == "MODIFIED" and event.prev is not None:
                    prev = self._decode(event.kv.key, k, event.prev.value)
            except (SecretsError, ValueError) as exc:
                log.error("skipped an unreadable change of %s: %s", event.kv.key, exc)
                return None
            change = Change(event.type, namespace, k, name, obj, prev, event.revision)
            event.memo["edge:change"] = change
        return change
