"""DeviceTwin: EdgeCore's module that keeps the node's device twins (kubeedge.md §5.2-5.5).

Plain async handlers; MQTT (EventBus), DMI (mappers) and the cloud (MetaManager, EdgeHub) are
thin adapters around them. Each change is written to the store before anything is said
about it: a result on MQTT or a message in the upstream outbox means the change survives a
crash. Changes to one device are serialized (striped locks), so its results, documents and
deltas go out in the order the changes were made. No handler raises: a bad request gets an
error result with KubeEdge's code, a bad cloud object is logged and ignored.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ...protocol import Message
from ...store import Store
from . import documents as docs
from . import upstream
from .membership import (
    description,
    desired_changes,
    identity,
    model_name,
    model_rules,
    node_name,
)
from .storing import DeviceRecord, ModelRecord, Records
from .topics import (
    DELTA,
    DOCUMENT,
    MEMBERSHIP_GET_RESULT,
    MEMBERSHIP_UPDATED,
    RESULT,
    TWIN_GET,
    TWIN_UPDATE,
    device_topic,
    membership_topic,
    parse_device_topic,
    parse_membership_get,
    valid_name,
)
from .twins import INTERNAL, NOT_FOUND, Outcome, Refusal, Rule, apply_cloud, apply_edge, delta

__all__ = ["DeviceTwin", "Publish", "Upstream"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]  # publish on MQTT (QoS 1) through EventBus
Upstream = Callable[[str, Message], None]  # durable outbox put; the same key: latest wins

_STRIPES = 64


class DeviceTwin:
    def __init__(
        self,
        store: Store,
        node_name: str,
        *,
        publish: Publish,
        upstream: Upstream,
        clock: Callable[[], float] = time.time,
        max_payload: int = 1 << 20,
        max_properties: int = 256,
        max_twins: int = 1024,
    ) -> None:
        self.node_name = node_name
        self.max_payload = max_payload
        self.max_properties = max_properties  # per update or report
        self.max_twins = max_twins  # per device, edge-added twins included
        self._records = Records(store)
        self._publish_fn = publish
        self._upstream = upstream
        self._clock = clock
        self._devices: dict[tuple[str, str], DeviceRecord] = {}
        self._models: dict[tuple[str, str], ModelRecord] = {}
        self._locks = tuple(asyncio.Lock() for _ in range(_STRIPES))
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load models and devices, and put again what may not have reached the outbox."""
        self._models = {(m.namespace, m.name): m for m in await self._records.load_models()}
        self._devices = {(r.namespace, r.name): r for r in await self._records.load_devices()}
        for record in list(self._devices.values()):
            if not record.pending:
                continue
            # Put first, then forget: a crash in between only sends the latest state twice.
            record = record.copy()
            record.pending = self._send_up(record, record.pending)
            try:
                await self._records.save(record)
            except Exception:
                log.exception("could not store device %s", record.id)
                continue
            self._devices[(record.namespace, record.name)] = record
        self._running = True

    async def stop(self) -> None:
        """Refuse new work and wait for what is in flight."""
        self._running = False
        for lock in self._locks:
            async with lock:
                pass

    # -- from the cloud -----------------------------------------------------------------------

    async def device_changed(self, device: dict[str, Any]) -> None:
        if not self._accepting("a cloud change"):
            return
        try:
            ident = identity(device, "Device")
        except Refusal as exc:
            log.warning("ignored a Device: %s", exc.reason)
            return
        node = node_name(device)
        if node and node != self.node_name:  # moved to another node: no longer ours
            await self.device_removed(ident.namespace, ident.name)
            return
        async with self._lock(ident.namespace, ident.name):
            try:
                await self._device_changed(
                    device, ident.namespace, ident.name, ident.resource_version
                )
            except Refusal as exc:
                log.error(
                    "could not apply Device %s/%s: %s", ident.namespace, ident.name, exc.reason
                )

    async def _device_changed(self, device: dict[str, Any], ns: str, name: str, rv: int) -> None:
        old = self._devices.get((ns, name))
        if old is not None and rv < old.resource_version:
            log.info(
                "ignored Device %s/%s at resourceVersion %d < %d",
                ns,
                name,
                rv,
                old.resource_version,
            )
            return
        rules = self._rules(ns, device)
        base = old.copy() if old is not None else DeviceRecord(ns, name, device)
        changes = desired_changes(device, rv, base.twins, rules)
        outcome = apply_cloud(base.twins, changes, now=self._now(), rules=rules, keep=set(changes))
        for key, reason in outcome.skipped.items():
            log.warning("Device %s/%s: desired value of %r ignored: %s", ns, name, key, reason)
        if old is not None and not outcome.dirty and device == old.device:
            return
        base.device, base.twins = device, outcome.twins
        base.resource_version = max(rv, base.resource_version)
        await self._commit(base, [])  # the cloud's own change: nothing to tell it
        now = self._now()
        if old is None:
            entry = self._entry(base, twins=True)
            payload = docs.membership_updated_payload(now, [entry], [])
            await self._publish(membership_topic(self.node_name, MEMBERSHIP_UPDATED), payload)
        await self._announce(base, docs.new_event_id(), now, outcome)

    async def device_removed(self, namespace: str, name: str) -> None:
        if not self._accepting("a cloud change"):
            return
        async with self._lock(namespace, name):
            record = self._devices.get((namespace, name))
            if record is None:
                return
            try:
                await self._records.delete(record)
            except Exception:
                log.exception("could not delete device %s from the store", record.id)
                return
            del self._devices[(namespace, name)]
            payload = docs.membership_updated_payload(self._now(), [], [self._entry(record)])
            await self._publish(membership_topic(self.node_name, MEMBERSHIP_UPDATED), payload)

    async def model_changed(self, model: dict[str, Any]) -> None:
        if not self._accepting("a cloud change"):
            return
        try:
            ident = identity(model, "DeviceModel")
            model_rules(model)  # checks the properties
        except Refusal as exc:
            log.warning("ignored a DeviceModel: %s", exc.reason)
            return
        key = (ident.namespace, ident.name)
        async with self._lock("model:" + ident.namespace, ident.name):
            old = self._models.get(key)
            if old is not None and (
                ident.resource_version < old.resource_version or old.model == model
            ):
                return
            rv = max(ident.resource_version, old.resource_version if old else 0)
            new = ModelRecord(*key, model, rv, old.revision if old else 0)
            try:
                await self._records.save(new)
            except Exception:
                log.exception("could not store DeviceModel %s/%s", *key)
                return
            self._models[key] = new

    async def model_removed(self, namespace: str, name: str) -> None:
        if not self._accepting("a cloud change"):
            return
        async with self._lock("model:" + namespace, name):
            old = self._models.get((namespace, name))
            if old is None:
                return
            try:
                await self._records.delete(old)
            except Exception:
                log.exception("could not delete DeviceModel %s/%s", namespace, name)
                return
            del self._models[(namespace, name)]

    async def cloud_sync(self, namespace: str, name: str, content: Any) -> None:
        """KubeEdge's ``TwinCloudSync``: twins with explicit ``{cloud, edge}`` versions. A
        property whose local copy is newer is refused and its edge copy goes back up."""
        if not self._accepting("a cloud sync"):
            return
        if isinstance(content, bytes | str):
            try:
                content = docs.decode(
                    content.encode() if isinstance(content, str) else content, self.max_payload
                )
            except Refusal as exc:
                log.warning("ignored a cloud sync of %s/%s: %s", namespace, name, exc.reason)
                return
        async with self._lock(namespace, name):
            try:
                event_id, changes = docs.parse_twin_update(
                    content, self.max_properties, versions=True
                )
                record = self._device(namespace, name)
                syncs = {k: c for k, c in changes.items() if c is not None}  # no deletes from here
                now = self._now()
                outcome = apply_cloud(
                    record.twins, syncs, now=now, rules=self._rules(namespace, record.device)
                )
                if not outcome.dirty and not outcome.rejected:
                    return
                new = record.copy()
                new.twins = outcome.twins
                await self._commit(new, [upstream.twin_key(new, k) for k in outcome.rejected])
            except Refusal as exc:
                log.warning("ignored a cloud sync of %s/%s: %s", namespace, name, exc.reason)
                return
            await self._announce(new, event_id, now, outcome)

    # -- from MQTT and mappers ----------------------------------------------------------------

    async def handle_mqtt(self, topic: str, payload: bytes) -> None:
        if not self._accepting(f"a message on {topic[:200]}"):
            return
        try:
            await self._route(topic, payload)
        except Exception:  # the last line: EventBus must never see one
            log.exception("DeviceTwin failed on a message on %s", topic[:200])

    async def _route(self, topic: str, payload: bytes) -> None:
        target = parse_device_topic(topic)
        node = None if target is not None else parse_membership_get(topic)
        if target is None and node != self.node_name:
            return  # not a request to this node (or our own results coming back)
        result = (
            target.result if target else membership_topic(self.node_name, MEMBERSHIP_GET_RESULT)
        )
        try:
            body = docs.decode(payload, self.max_payload)
        except Refusal as exc:
            await self._publish(result, docs.error_payload("", self._now(), exc.code, exc.reason))
            return
        if target is None:
            await self._membership_get(result, body)
        elif target.request == TWIN_UPDATE:
            await self._twin_update(target.namespace, target.name, body, from_mapper=False)
        elif target.request == TWIN_GET:
            await self._twin_get(target.namespace, target.name, body)
        else:
            await self._state_update(target.namespace, target.name, body)

    async def report_twins(self, namespace: str, name: str, twins: list[dict[str, Any]]) -> None:
        if not self._ready(namespace, name):
            return
        try:
            body = docs.report_to_update(twins, self.max_properties)
        except Refusal as exc:
            topic = device_topic(namespace, name, RESULT[TWIN_UPDATE])
            await self._publish(topic, docs.error_payload("", self._now(), exc.code, exc.reason))
            return
        await self._twin_update(namespace, name, body, from_mapper=True)

    async def report_state(self, namespace: str, name: str, state: str) -> None:
        if self._ready(namespace, name):
            await self._state_update(namespace, name, {"state": state})

    def _ready(self, namespace: str, name: str) -> bool:
        # A name that cannot be a device cannot be a topic segment either: nowhere to answer.
        if not self._accepting("a mapper report"):
            return False
        if not valid_name(namespace) or not valid_name(name):
            log.warning("ignored a report for %r/%r", namespace[:64], name[:64])
            return False
        return True

    async def _twin_update(self, ns: str, name: str, body: Any, *, from_mapper: bool) -> None:
        topic = device_topic(ns, name, RESULT[TWIN_UPDATE])
        event_id = docs.event_id_of(body)
        async with self._lock(ns, name):
            try:
                event_id, changes = docs.parse_twin_update(body, self.max_properties)
                record = self._device(ns, name)
                now = self._now()
                outcome = apply_edge(
                    record.twins,
                    changes,
                    now=now,
                    rules=self._rules(ns, record.device),
                    max_twins=self.max_twins,
                    from_mapper=from_mapper,
                )
                if outcome.dirty:
                    record = record.copy()
                    record.twins = outcome.twins
                    keys = [upstream.twin_key(record, k) for k in outcome.changed]
                    await self._commit(record, keys)
            except Refusal as exc:
                await self._publish(
                    topic, docs.error_payload(event_id, self._now(), exc.code, exc.reason)
                )
                return
            await self._publish(topic, docs.twin_payload(event_id, now, outcome.result))
            await self._announce(record, event_id, now, outcome, always_delta=True)

    async def _twin_get(self, ns: str, name: str, body: Any) -> None:
        topic = device_topic(ns, name, RESULT[TWIN_GET])
        event_id = docs.event_id_of(body)
        try:
            event_id = docs.parse_base(body)
            record = self._device(ns, name)
            payload = docs.twin_payload(event_id, self._now(), _views(record))
        except Refusal as exc:
            payload = docs.error_payload(event_id, self._now(), exc.code, exc.reason)
        await self._publish(topic, payload)

    async def _state_update(self, ns: str, name: str, body: Any) -> None:
        topic = device_topic(ns, name, "state/update/result")
        event_id = docs.event_id_of(body)
        async with self._lock(ns, name):
            try:
                event_id, state = docs.parse_state(body)
                record = self._device(ns, name)
                now = self._now()
                if state != record.state:
                    record = record.copy()
                    record.state = state
                    record.last_online = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now / 1000))
                    await self._commit(record, [upstream.state_key(record)])
            except Refusal as exc:
                await self._publish(
                    topic, docs.error_payload(event_id, self._now(), exc.code, exc.reason)
                )
                return
            payload = docs.state_payload(
                event_id or docs.new_event_id(), now, record.name, record.state, record.last_online
            )
            await self._publish(topic, payload)

    async def _membership_get(self, topic: str, body: Any) -> None:
        try:
            event_id = docs.parse_base(body)
        except Refusal as exc:
            await self._publish(
                topic, docs.error_payload(docs.event_id_of(body), self._now(), exc.code, exc.reason)
            )
            return
        devices = [self._entry(r) for _, r in sorted(self._devices.items())]
        await self._publish(topic, docs.membership_get_payload(event_id, self._now(), devices))

    # -- reads --------------------------------------------------------------------------------

    def twin_document(self, namespace: str, name: str) -> dict[str, Any] | None:
        record = self._devices.get((namespace, name))
        return None if record is None else docs.twin_payload("", self._now(), _views(record))

    def devices(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(r.device) for _, r in sorted(self._devices.items())]

    def models(self) -> list[dict[str, Any]]:
        """The DeviceModels this node holds (for DMI MapperRegister)."""
        return [copy.deepcopy(m.model) for _, m in sorted(self._models.items())]

    def state(self, namespace: str, name: str) -> str | None:
        record = self._devices.get((namespace, name))
        return None if record is None else record.state

    # -- internals ----------------------------------------------------------------------------

    def _accepting(self, what: str) -> bool:
        # Before start() the node's devices are unknown: answering would be wrong (404s).
        if not self._running:
            log.error("DeviceTwin is not running; dropped %s", what)
        return self._running

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(f"{namespace}/{name}".encode()) % _STRIPES]

    def _device(self, ns: str, name: str) -> DeviceRecord:
        record = self._devices.get((ns, name))
        if record is None:
            raise Refusal(
                NOT_FOUND, f"device {ns[:253]}/{name[:253]} is not on node {self.node_name}"
            )
        return record

    def _rules(self, ns: str, device: dict[str, Any]) -> dict[str, Rule]:
        model = self._models.get((ns, model_name(device)))
        try:
            return model_rules(model.model if model else None)
        except Refusal:  # a model row written before its checks existed
            return {}

    def _entry(self, record: DeviceRecord, *, twins: bool = False) -> dict[str, Any]:
        return docs.device_entry(
            record.id,
            record.name,
            description(record.device),
            record.state,
            record.last_online,
            record.twins if twins else None,
        )

    async def _commit(self, record: DeviceRecord, keys: list[str]) -> None:
        """Write ``record`` with upstream ``keys`` (and any earlier unsent ones) as pending, make
        it current, then put those keys' messages in the outbox. Refusal(500) if the write
        fails; nothing changed then."""
        record.pending = sorted(set(record.pending) | set(keys))
        try:
            await self._records.save(record)
        except Exception as exc:
            log.exception("could not store device %s", record.id)
            try:  # a CAS miss means the row moved on: start again from what is stored
                stored = await self._records.reload_device(record.namespace, record.name)
                if stored is not None:
                    self._devices[(record.namespace, record.name)] = stored
                    # A write that landed but was cancelled before it was sent up (its caller
                    # gave up) left keys pending in the row: send them now, or never.
                    stored.pending = self._send_up(stored, stored.pending)
            except Exception:
                log.exception("could not reread device %s", record.id)
            raise Refusal(INTERNAL, f"could not store device {record.id}: {exc}") from None
        self._devices[(record.namespace, record.name)] = record
        record.pending = self._send_up(record, record.pending)  # the stored row keeps them all

    def _send_up(self, record: DeviceRecord, keys: list[str]) -> list[str]:
        failed = []
        now = self._now()
        for key in keys:
            message = upstream.message(record, key, now)
            if message is None:
                continue
            try:
                self._upstream(key, message)
            except Exception:
                log.exception("could not queue %s upstream", key)
                failed.append(key)
        return failed

    async def _announce(
        self,
        record: DeviceRecord,
        event_id: str,
        now: int,
        outcome: Outcome,
        *,
        always_delta: bool = False,
    ) -> None:
        """The document of what changed, and the delta when an expected value is not met.

        After an edge update the delta goes out whenever one remains (KubeEdge's rule: a
        mapper that missed one gets it again); after a cloud change, only if it changed.
        """
        if outcome.documents:
            topic = device_topic(record.namespace, record.name, DOCUMENT)
            await self._publish(topic, docs.document_payload(event_id, now, outcome.documents))
        pending = delta(record.twins)
        if pending and (always_delta or outcome.documents):
            topic = device_topic(record.namespace, record.name, DELTA)
            await self._publish(topic, docs.delta_payload(now, record.twins, pending))

    async def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        try:
            await self._publish_fn(topic, orjson.dumps(payload))
        except Exception:  # the change is committed; the app can ask again (twin/get)
            log.exception("could not publish on %s", topic)


def _views(record: DeviceRecord) -> dict[str, Any]:
    return {key: twin.view() for key, twin in record.twins.items()}
