"""ConfigMaps and Secrets as the pod's containers and volumes see them.

The edge hands the runtime a resolver (sync or async). Every answer is recorded, so the runtime
can persist a snapshot next to the pod and restart its containers after an EdgeCore restart
before the edge has handed it a live resolver again (edge autonomy).
"""

from __future__ import annotations

import base64
import binascii
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .configuring import ConfigError

Resolver = Callable[[str, str, str], dict[str, Any] | Awaitable[dict[str, Any] | None] | None]
CONFIGMAP = "ConfigMap"
SECRET = "Secret"
_LOWER = {CONFIGMAP: "configmap", SECRET: "secret"}


class ObjectSource:
    """Looks ConfigMaps and Secrets up once per pass and remembers what it saw."""

    def __init__(self, resolve: Resolver, namespace: str) -> None:
        self._resolve = resolve
        self.namespace = namespace
        self.seen: dict[str, dict[str, Any] | None] = {}

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        key = f"{kind}/{self.namespace}/{name}"
        if key in self.seen:
            return self.seen[key]
        try:
            found = self._resolve(kind, self.namespace, name)
            if inspect.isawaitable(found):
                found = await found
        except Exception as exc:  # the edge's store failing must not crash the pod worker
            raise ConfigError(f'failed to get {_LOWER[kind]} "{name}": {exc}') from exc
        obj = found if isinstance(found, dict) else None
        self.seen[key] = _trimmed(obj)
        return self.seen[key]

    async def data(self, kind: str, name: str, *, optional: bool) -> dict[str, bytes] | None:
        """The object's keys and bytes; None when it is absent and ``optional``."""
        obj = await self.get(kind, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{_LOWER[kind]} "{name}" not found')
        return decode_data(kind, obj, name)

    async def key(self, kind: str, name: str, key: str, *, optional: bool) -> bytes | None:
        data = await self.data(kind, name, optional=optional)
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {kind} {self.namespace}/{name}")
        return data[key]


def _trimmed(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """Only what the runtime reads: the snapshot on disk stays small."""
    if obj is None:
        return None
    return {k: obj[k] for k in ("kind", "data", "binaryData", "stringData") if k in obj}


def decode_data(kind: str, obj: Mapping[str, Any], name: str) -> dict[str, bytes]:
    """Keys to bytes: ConfigMap ``data`` is text and ``binaryData`` base64; Secret ``data`` is
    base64 (``stringData``, normally folded in by the API server, is text and wins)."""
    fields = (
        (("data", False), ("binaryData", True))
        if kind == CONFIGMAP
        else (("data", True), ("stringData", False))
    )
    out: dict[str, bytes] = {}
    for field, encoded in fields:
        values = obj.get(field)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f'{_LOWER[kind]} "{name}": {field} is not a map')
        for k, v in values.items():
            if not isinstance(v, str):
                raise ConfigError(f'{_LOWER[kind]} "{name}": {field}.{k} is not a string')
            if not encoded:
                out[str(k)] = v.encode()
                continue
            try:
                out[str(k)] = base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ConfigError(f'{_LOWER[kind]} "{name}": {field}.{k}: {exc}') from exc
    return out


def snapshot_resolver(seen: Mapping[str, dict[str, Any] | None]) -> Resolver:
    """A resolver answering from a recorded snapshot (what the pod used last time)."""

    def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return seen.get(f"{kind}/{namespace}/{name}")

    return resolve
