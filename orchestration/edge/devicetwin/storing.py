"""DeviceTwin's rows in the node's store: one JSON row per device, one per DeviceModel.

``devicetwin/devices/<namespace>/<name>`` holds the Device object, its state and twins, and
``pending``: the upstream keys whose message may not have reached the outbox when the row
was written (a crash in between); a restart puts them again. ``devicetwin/models/<ns>/<name>``
holds the DeviceModel. Every write is a compare-and-swap on the row's revision.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from ...store import KeyNotFoundError, Store
from .twins import Twin

__all__ = ["DEVICES", "MODELS", "DeviceRecord", "ModelRecord", "Records"]

log = logging.getLogger(__name__)

DEVICES = "devicetwin/devices/"
MODELS = "devicetwin/models/"
_PAGE = 500


@dataclass(slots=True)
class DeviceRecord:
    namespace: str
    name: str
    device: dict[str, Any]
    resource_version: int = 0  # the Device's, as an integer
    twins: dict[str, Twin] = field(default_factory=dict)
    state: str = "unknown"
    last_online: str = ""
    pending: list[str] = field(default_factory=list)
    revision: int = 0  # the row's mod_revision; 0 while not stored

    @property
    def key(self) -> str:
        return f"{DEVICES}{self.namespace}/{self.name}"

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def copy(self) -> DeviceRecord:
        """A record to change: twins are copied, the Device object is replaced, never edited."""
        return DeviceRecord(
            self.namespace,
            self.name,
            self.device,
            self.resource_version,
            {k: t.copy() for k, t in self.twins.items()},
            self.state,
            self.last_online,
            list(self.pending),
            self.revision,
        )

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "device": self.device,
                "resourceVersion": self.resource_version,
                "state": self.state,
                "last_online": self.last_online,
                "twin": {k: t.view(versions=True) for k, t in self.twins.items()},
                "pending": self.pending,
            }
        )

    @classmethod
    def decode(cls, namespace: str, name: str, raw: bytes, revision: int) -> DeviceRecord:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("device"), dict):
            raise ValueError("not a device row")
        twins = data.get("twin") or {}
        pending = data.get("pending") or []
        rv, state, last = data.get("resourceVersion", 0), data.get("state"), data.get("last_online")
        if not isinstance(twins, dict) or not isinstance(pending, list):
            raise ValueError("twin must be an object and pending a list")
        if not isinstance(rv, int) or not isinstance(state, str) or not isinstance(last, str):
            raise ValueError("resourceVersion, state or last_online has the wrong type")
        return cls(
            namespace,
            name,
            data["device"],
            rv,
            {str(k): Twin.from_view(v) for k, v in twins.items()},
            state,
            last,
            [str(p) for p in pending],
            revision,
        )


@dataclass(slots=True)
class ModelRecord:
    namespace: str
    name: str
    model: dict[str, Any]
    resource_version: int = 0
    revision: int = 0

    @property
    def key(self) -> str:
        return f"{MODELS}{self.namespace}/{self.name}"


def _split(key: str, prefix: str) -> tuple[str, str] | None:
    parts = key[len(prefix) :].split("/")
    return (parts[0], parts[1]) if len(parts) == 2 and all(parts) else None


class Records:
    """Reads and CAS-writes the rows; store errors propagate to the caller."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _rows(self, prefix: str) -> list[tuple[str, str, bytes, int]]:
        rows, after = [], ""
        while True:
            page = await self.store.list(prefix, limit=_PAGE, start_after=after)
            for kv in page.kvs:
                names = _split(kv.key, prefix)
                if names is not None:  # anything else under the prefix is not ours
                    rows.append((*names, kv.value, kv.mod_revision))
            if not page.more or not page.kvs:
                return rows
            after = page.kvs[-1].key

    async def load_devices(self) -> list[DeviceRecord]:
        records = []
        for namespace, name, raw, revision in await self._rows(DEVICES):
            try:
                records.append(DeviceRecord.decode(namespace, name, raw, revision))
            except (ValueError, TypeError) as exc:  # orjson's error is a ValueError
                log.error("skipped the damaged device row %s/%s: %s", namespace, name, exc)
        return records

    async def load_models(self) -> list[ModelRecord]:
        records = []
        for namespace, name, raw, revision in await self._rows(MODELS):
            try:
                data = orjson.loads(raw)
                model, rv = data["model"], data["resourceVersion"]
                if not isinstance(model, dict) or not isinstance(rv, int):
                    raise ValueError("not a model row")
            except (ValueError, TypeError, KeyError) as exc:
                log.error("skipped the damaged model row %s/%s: %s", namespace, name, exc)
                continue
            records.append(ModelRecord(namespace, name, model, rv, revision))
        return records

    async def reload_device(self, namespace: str, name: str) -> DeviceRecord | None:
        kv = await self.store.get(f"{DEVICES}{namespace}/{name}")
        return (
            None if kv is None else DeviceRecord.decode(namespace, name, kv.value, kv.mod_revision)
        )

    async def save(self, record: DeviceRecord | ModelRecord) -> None:
        """Create or CAS-update the row; sets ``record.revision`` to the committed one."""
        if isinstance(record, DeviceRecord):
            value = record.encode()
        else:
            value = orjson.dumps(
                {"model": record.model, "resourceVersion": record.resource_version}
            )
        if record.revision == 0:
            kv = await self.store.create(record.key, value)
        else:
            kv = await self.store.update(record.key, value, record.revision)
        record.revision = kv.mod_revision

    async def delete(self, record: DeviceRecord | ModelRecord) -> None:
        with contextlib.suppress(KeyNotFoundError):  # already gone
            await self.store.delete(record.key, record.revision)
