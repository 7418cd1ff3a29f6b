"""How API objects sit in the revisioned store: keys, encoding, encryption at rest.

The resourceVersion is the row's revision, so it is never stored inside the value: it is set
on the decoded object when read.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..apis import ResourceType
from ..store import KeyValue
from .encryption import AESGCMTransformer
from .errors import APIError

ENCRYPTED_RESOURCES = frozenset({("", "secrets")})
MAX_OBJECT_BYTES = 3 * 1024 * 1024 // 2  # etcd's default request limit, which kine shares


def type_prefix(rt: ResourceType) -> str:
    # Keyed by group and plural, not version: every served version of a CRD shares its objects.
    return f"/registry/{rt.group or 'core'}/{rt.plural}/"


def object_key(rt: ResourceType, namespace: str, name: str) -> str:
    if rt.namespaced:
        return f"{type_prefix(rt)}{namespace}/{name}"
    return f"{type_prefix(rt)}{name}"


def list_prefix(rt: ResourceType, namespace: str | None) -> str:
    if rt.namespaced and namespace:
        return f"{type_prefix(rt)}{namespace}/"
    return type_prefix(rt)


class Codec:
    def __init__(self, transformer: AESGCMTransformer | None) -> None:
        self._transformer = transformer

    def _encrypts(self, rt: ResourceType) -> bool:
        return self._transformer is not None and (rt.group, rt.plural) in ENCRYPTED_RESOURCES

    def encode(self, rt: ResourceType, key: str, obj: dict[str, Any]) -> bytes:
        meta = obj.get("metadata") or {}
        rv = meta.pop("resourceVersion", None)
        try:
            raw = orjson.dumps(obj)
        finally:
            if rv is not None:
                meta["resourceVersion"] = rv
        if len(raw) > MAX_OBJECT_BYTES:
            raise APIError(
                413,
                f"the object is {len(raw)} bytes once encoded, over the limit of "
                f"{MAX_OBJECT_BYTES} bytes",
            )
        if self._encrypts(rt):
            assert self._transformer is not None
            return self._transformer.encrypt(raw, key.encode())
        return raw

    def decode(self, rt: ResourceType, kv: KeyValue) -> dict[str, Any]:
        raw = kv.value
        if self._encrypts(rt):
            assert self._transformer is not None
            raw = self._transformer.decrypt(raw, kv.key.encode())
        obj: dict[str, Any] = orjson.loads(raw)
        obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
        # Objects of a CRD are stored once; each served version shows its own apiVersion.
        obj["apiVersion"] = rt.api_version
        return obj
