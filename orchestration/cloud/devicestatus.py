"""Device reports from edge nodes become Device status (kubeedge.md §5.2).

A node's DeviceTwin sends ``device/<ns>/<name>/twin/edge_updated`` (one property's twin:
``actual`` is what the device reported, ``expected`` the desired value the mapper applied) and
``device/<ns>/<name>/state/update``. Each is accepted only from the node the Device is bound
to, and merged into ``status``: ``twins[].reported`` / ``observedDesired`` with
``metadata.timestamp``, ``state``, ``lastOnlineTime`` and ``lastReportTime``. A report older
than what the status holds (by its timestamp) changes nothing, so the latest wins whatever order
reports arrive in after a reconnect. Every report is answered (``response`` or ``error``), which
is what lets the node drop it from its outbox.

A node reports each property of each Device on its own, so the same Devices come back again and
again: the object each status write returned is kept (``cache`` Devices, least recently used
first out) and the next report writes on top of it with its resourceVersion as precondition,
without reading the Device first. Anyone else's write in between is a conflict: read, retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..client import DEVICES, Client, ClientError, ConflictError, NotFoundError
from ..protocol import UPDATE, Message

__all__ = ["DeviceReports"]

log = logging.getLogger(__name__)

SOURCE = "devicecontroller"
STATES = frozenset({"ok", "online", "offline", "unhealthy", "unknown"})
_ONLINE = frozenset({"ok", "online"})
_ATTEMPTS = 10  # concurrent writers of one Device's status; each retry means another one won
_MAX_VALUE = 512  # bytes, as DeviceTwin's own rule
MAX_TWINS = 1024  # per Device, as DeviceTwin keeps: a node cannot grow a status without end


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceReports:
    """``handle(node, message)`` for upstream device messages; ``handles(message)`` says which."""

    def __init__(
        self, client: Client, *, clock: Callable[[], float] = time.time, cache: int = 10_000
    ) -> None:
        self.client = client
        self._clock = clock
        self._cache_size = cache
        # The Device as this writer last wrote it; only read and replaced under its lock.
        self._written: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        # Held only while in use: the entry goes when the last holder lets go of the lock.
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @staticmethod
    def handles(message: Message) -> bool:
        return message.resource.startswith("device/")

    async def handle(self, node: str, message: Message) -> Message:
        try:
            if message.operation != UPDATE:
                raise _Refused(f"bad request: {message.operation} {message.resource}")
            ns, name, what = _parse(message.resource)
            content = message.content
            if not isinstance(content, dict):
                raise _Refused("bad request: the content must be an object")
            lock = self._locks.get((ns, name))
            if lock is None:
                lock = self._locks[ns, name] = asyncio.Lock()
            async with lock:  # one writer per Device: the twins list is read, merged, written
                await self._apply(node, ns, name, what, content)
        except _Refused as exc:
            if exc.reason.startswith("forbidden"):
                log.warning("refused a device report from node %s: %s", node, exc.reason)
            return message.error(exc.reason, source=SOURCE)
        except ClientError as exc:
            return message.error(f"{exc.reason}: {exc.message}", source=SOURCE)
        return message.response("OK", source=SOURCE)

    async def _apply(
        self, node: str, ns: str, name: str, what: str, content: dict[str, Any]
    ) -> None:
        key = (ns, name)
        for attempt in range(_ATTEMPTS):
            device = self._written.pop(key, None) if attempt == 0 else None
            cached = device is not None
            if device is None:
                try:
                    device = await self.client.get(DEVICES, name, ns)
                except NotFoundError:
                    raise _Refused(f"not found: device {ns}/{name}") from None
            bound = (device.get("spec") or {}).get("nodeName")
            if bound != node:
                if cached:
                    continue  # maybe rebound since: only the Device as it is now may refuse
                raise _Refused(f"forbidden: device {ns}/{name} is not bound to node {node}")
            status = dict(device.get("status") or {})
            changed = (
                self._twins(status, content) if what == "twin" else self._state(status, content)
            )
            if not changed:
                if cached:
                    continue  # "older" than what we wrote; someone may have written since
                self._remember(key, device)
                return  # older than what the status holds: the latest already won
            status["lastReportTime"] = _rfc3339(self._clock())
            # A merge patch of the status, as KubeEdge's devicecontroller writes it, with the
            # resourceVersion it was built on as precondition.
            body = {
                "metadata": {"resourceVersion": device["metadata"]["resourceVersion"]},
                "status": status,
            }
            try:
                written = await self.client.patch(
                    DEVICES, name, body, ns, patch_type="merge", subresource="status"
                )
            except ConflictError:
                continue  # another writer got in between: read again
            except NotFoundError:
                raise _Refused(f"not found: device {ns}/{name}") from None
            self._remember(key, written)
            return
        raise _Refused(f"conflict: device {ns}/{name} kept changing")

    def _remember(self, key: tuple[str, str], device: dict[str, Any]) -> None:
        self._written[key] = device
        if len(self._written) > self._cache_size:
            self._written.popitem(last=False)

    def _twins(self, status: dict[str, Any], content: dict[str, Any]) -> bool:
        twin = content.get("twin")
        if not isinstance(twin, dict) or not twin:
            raise _Refused("bad request: content.twin must be a non-empty object")
        twins = [dict(t) for t in status.get("twins") or [] if isinstance(t, dict)]
        by_name = {t.get("propertyName"): t for t in twins}
        if len(by_name | dict.fromkeys(twin)) > MAX_TWINS:
            raise _Refused(f"bad request: a Device's status holds at most {MAX_TWINS} twins")
        changed = False
        for prop, value in twin.items():
            if not isinstance(prop, str) or not prop or not isinstance(value, dict):
                raise _Refused(f"bad request: twin {prop!r} must name an object")
            entry = by_name.get(prop)
            if entry is None:
                entry = by_name[prop] = {"propertyName": prop}
                twins.append(entry)
            for side, field in (("actual", "reported"), ("expected", "observedDesired")):
                if side in value and value[side] is not None:
                    changed |= _merge_side(entry, field, value[side], prop)
        status["twins"] = twins
        return changed

    def _state(self, status: dict[str, Any], content: dict[str, Any]) -> bool:
        # No ordering by timestamp needed: the node keeps one state report per device (its
        # outbox coalesces them) and the link delivers in order.
        state = content.get("state")
        if state not in STATES:
            raise _Refused(f"bad request: state {state!r} is not one of {sorted(STATES)}")
        status["state"] = state
        if state in _ONLINE:
            stamp = _timestamp(content.get("timestamp"))
            status["lastOnlineTime"] = _rfc3339(stamp / 1000 if stamp else self._clock())
        return True


def _merge_side(entry: dict[str, Any], field: str, side: Any, prop: str) -> bool:
    if not isinstance(side, dict):
        raise _Refused(f"bad request: twin {prop!r}: a value must be an object")
    value = side.get("value")
    if not isinstance(value, str) or len(value.encode()) >= _MAX_VALUE:
        raise _Refused(f"bad request: twin {prop!r}: value must be a string under 512 bytes")
    raw = side.get("metadata")
    metadata: dict[str, Any] = raw if isinstance(raw, dict) else {}
    stamp = _timestamp(metadata.get("timestamp"))
    current = entry.get(field) or {}
    if stamp and stamp < _timestamp((current.get("metadata") or {}).get("timestamp")):
        return False  # an older report arriving late
    meta = {str(k): str(v) for k, v in metadata.items() if isinstance(v, str | int | float)}
    if stamp:
        meta["timestamp"] = str(stamp)
    entry[field] = {"value": value, "metadata": meta}
    return True


def _parse(resource: str) -> tuple[str, str, str]:
    parts = resource.split("/")
    if len(parts) == 5 and parts[3:] == ["twin", "edge_updated"]:
        what = "twin"
    elif len(parts) == 5 and parts[3:] == ["state", "update"]:
        what = "state"
    else:
        raise _Refused(f"bad request: {resource!r} is not a device twin or state report")
    if not parts[1] or not parts[2]:
        raise _Refused(f"bad request: {resource!r} names no device")
    return parts[1], parts[2], what


def _timestamp(value: Any) -> int:
    """KubeEdge's timestamps: milliseconds, as a number or a string; 0 when absent."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return max(0, int(value))
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return 0


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
