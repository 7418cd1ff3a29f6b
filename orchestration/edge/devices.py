"""EdgeCore's device side (kubeedge.md §5): the MQTT broker, EventBus, DeviceTwin and DMI.

The broker is embedded unless ``mqtt_broker`` names an external one (mosquitto); EventBus
connects to it and hands KubeEdge's device topics to DeviceTwin. Mappers register over DMI
(a Unix socket in the data dir): they get the node's devices of their protocol, their reports
take the same path as an MQTT ``twin/update``, and later Device changes reach them as
RegisterDevice/UpdateDevice/RemoveDevice. Which mapper serves which protocol is kept in the
node's store, so the clients come back after a restart.

The cloud router's messages land here too: ``publish`` puts a REST request's body on a topic
of this node's broker, and ``forward`` sets the topics whose messages go up to the router
(kept in the store, so a node restarted while cut off still forwards them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from ..apis.dmi import MapperInfo
from ..protocol import GROUP_USER, UPLOAD, Message
from ..store import KeyExistsError, Store
from .devicetwin import DeviceTwin, Upstream
from .dmi import DeviceManagerServer, MapperCallError, MapperClients
from .eventbus import Broker
from .eventbus.bridging import EventBus, NotConnected
from .eventbus.packets import validate_topic_filter

__all__ = ["DEFAULT_MQTT_PORT", "Devices"]

log = logging.getLogger(__name__)

DEFAULT_MQTT_PORT = 1883
_MAPPERS = "devicemapper/"  # store key prefix: one row per protocol
_FORWARDED = "eventbus/forwarded"  # the router's topics, as a JSON list
_MAX_FORWARDED = 1000


class Devices:
    """``store``: the node's store (DeviceTwin's rows and mapper records live there too).
    ``upstream``: the node's outbox. ``mqtt_port``: the embedded broker's port (0 picks a
    free one); ``mqtt_broker``: ``HOST:PORT`` of an external broker instead."""

    def __init__(
        self,
        store: Store,
        node_name: str,
        *,
        upstream: Upstream,
        dmi_socket: str | Path,
        mqtt_port: int = DEFAULT_MQTT_PORT,
        mqtt_broker: str | None = None,
    ) -> None:
        self.store = store
        self.node_name = node_name
        self.broker: Broker | None = None
        if mqtt_broker is None:
            self.broker = Broker("127.0.0.1", mqtt_port)
            self._host, self._port = "127.0.0.1", mqtt_port
        else:
            host, _, port = mqtt_broker.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--mqtt-broker {mqtt_broker!r} is not HOST:PORT")
            self._host, self._port = host.strip("[]"), int(port)
        self.twin = DeviceTwin(store, node_name, publish=self._publish, upstream=upstream)
        self.eventbus: EventBus | None = None
        self.mappers = MapperClients()
        self.dmi = DeviceManagerServer(str(dmi_socket), self)
        # Devices handed to their mapper this run, with the protocol that picked it.
        self._sent: dict[tuple[str, str], str] = {}
        self._calls: dict[tuple[str, str], asyncio.Task[None]] = {}  # the latest per device
        self._upstream = upstream

    @property
    def mqtt_address(self) -> tuple[str, int]:
        """Where apps on the node reach the broker."""
        port = self.broker.port if self.broker is not None else self._port
        return self._host, port

    async def start(self) -> None:
        await self.twin.start()
        if self.broker is not None:
            await self.broker.start()
        self.eventbus = EventBus(
            node_name=self.node_name,
            on_device=self._on_mqtt,
            on_upload=self._upload,
            broker=self.broker,
            host=self._host,
            port=self._port,
        )
        stored = await self.store.get(_FORWARDED)
        if stored is not None:
            await self.eventbus.forward(frozenset(orjson.loads(stored.value)))
        await self.eventbus.start()
        for kv in (await self.store.list(_MAPPERS)).kvs:
            try:
                await self.mappers.add(MapperInfo.from_json(orjson.loads(kv.value)))
            except ValueError as exc:
                log.warning("dropped the unreadable mapper record %s: %s", kv.key, exc)
        await self.dmi.start()

    async def stop(self) -> None:
        calls, self._calls = list(self._calls.values()), {}
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await self.dmi.stop()
        await self.mappers.close()
        if self.eventbus is not None:
            await self.eventbus.stop()
            self.eventbus = None
        if self.broker is not None:
            await self.broker.stop()
        await self.twin.stop()

    # -- from the cloud, after MetaManager committed -------------------------------------

    async def changed(
        self, kind: str, namespace: str, name: str, obj: dict[str, Any] | None
    ) -> None:
        """A Device or DeviceModel the cloud sent (``obj``) or deleted (None)."""
        if kind == "devicemodel":
            if obj is None:
                await self.twin.model_removed(namespace, name)
            else:
                await self.twin.model_changed(obj)
            return
        key = (namespace, name)
        if obj is None or (obj.get("spec") or {}).get("nodeName") not in (None, self.node_name):
            await self.twin.device_removed(namespace, name)
            if (protocol := self._sent.pop(key, None)) is not None:
                remove = functools.partial(
                    self.mappers.remove_device, namespace, name, protocol=protocol
                )
                self._tell_mapper(key, "RemoveDevice", remove)
            return
        await self.twin.device_changed(obj)
        model = self._model_of(obj)
        protocol = ((obj.get("spec") or {}).get("protocol") or {}).get("protocolName")
        if model is None or protocol not in self.mappers.mappers:
            return  # the mapper gets it when it registers
        if key in self._sent:
            self._tell_mapper(
                key, "UpdateDevice", functools.partial(self.mappers.update_device, obj, model)
            )
        else:
            self._sent[key] = protocol
            self._tell_mapper(
                key, "RegisterDevice", functools.partial(self.mappers.register_device, obj, model)
            )

    def _tell_mapper(
        self, key: tuple[str, str], what: str, call: Callable[[], Awaitable[None]]
    ) -> None:
        """In the background, in order per device: a mapper that hangs (each call may take
        its 10 s deadline) must not hold up the cloud's messages to this node."""
        previous = self._calls.get(key)

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await call()
            except (MapperCallError, LookupError, ValueError) as exc:
                # The mapper is down or refuses: it gets the node's devices when it registers.
                log.warning("DMI %s %s/%s: %s", what, key[0], key[1], exc)

        task = asyncio.create_task(run(), name=f"dmi-{what}-{key[0]}/{key[1]}")
        self._calls[key] = task
        task.add_done_callback(functools.partial(self._call_done, key))

    def _call_done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]

    def _model_of(self, device: dict[str, Any]) -> dict[str, Any] | None:
        ref = ((device.get("spec") or {}).get("deviceModelRef") or {}).get("name")
        namespace = (device.get("metadata") or {}).get("namespace")
        for model in self.twin.models():
            meta = model.get("metadata") or {}
            if meta.get("name") == ref and meta.get("namespace") == namespace:
                return model
        return None

    # -- DMI: DeviceManagerHandler --------------------------------------------------------

    async def mapper_registered(
        self, mapper: MapperInfo
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        key = f"{_MAPPERS}{mapper.protocol}"
        value = orjson.dumps(mapper.to_json())
        current = await self.store.get(key)
        if current is None:
            with contextlib.suppress(KeyExistsError):  # registered twice at once: either will do
                await self.store.create(key, value)
        elif current.value != value:
            await self.store.update(key, value, current.mod_revision)
        await self.mappers.add(mapper)
        devices = [
            d
            for d in self.twin.devices()
            if ((d.get("spec") or {}).get("protocol") or {}).get("protocolName") == mapper.protocol
        ]
        models = [m for d in devices if (m := self._model_of(d)) is not None]
        unique = list({id(m): m for m in models}.values())
        for device in devices:
            meta = device.get("metadata") or {}
            self._sent[str(meta.get("namespace")), str(meta.get("name"))] = mapper.protocol
        log.info(
            "mapper %s (%s) registered: %d devices", mapper.name, mapper.protocol, len(devices)
        )
        return unique, devices

    async def device_status_reported(
        self, namespace: str, name: str, twins: list[dict[str, Any]]
    ) -> None:
        self._known(namespace, name)
        await self.twin.report_twins(namespace, name, twins)

    async def device_state_reported(self, namespace: str, name: str, state: str) -> None:
        self._known(namespace, name)
        await self.twin.report_state(namespace, name, state)

    def _known(self, namespace: str, name: str) -> None:
        if self.twin.twin_document(namespace, name) is None:
            raise KeyError(f"device {namespace}/{name} is not on node {self.node_name}")

    # -- the cloud router ----------------------------------------------------------------

    async def publish(self, topic: str, text: str) -> None:
        """A REST request's body, routed here by a Rule: published on this node's broker."""
        try:
            await self._publish_checked(topic, text.encode())
        except (ValueError, NotConnected) as exc:
            log.warning("router message for %r not published: %s", topic[:256], exc)

    async def forward(self, topics: list[Any]) -> None:
        """The router's whole list of topics to send up from this node."""
        wanted = [t for t in topics if isinstance(t, str) and _valid_filter(t)]
        if len(wanted) != len(topics) or len(wanted) > _MAX_FORWARDED:
            log.warning("ignored %d unusable router topics", len(topics) - len(wanted))
        chosen = frozenset(wanted[:_MAX_FORWARDED])
        value = orjson.dumps(sorted(chosen))
        current = await self.store.get(_FORWARDED)
        if current is None:
            with contextlib.suppress(KeyExistsError):
                await self.store.create(_FORWARDED, value)
        elif current.value != value:
            await self.store.update(_FORWARDED, value, current.mod_revision)
        if self.eventbus is not None:
            await self.eventbus.forward(chosen)

    async def _upload(self, topic: str, payload: bytes) -> None:
        # Durable and answered, like every report: one outbox row per message, none coalesced.
        text = payload.decode(errors="replace")
        message = Message("eventbus", GROUP_USER, UPLOAD, topic, text)
        self._upstream(f"upload/{message.msg_id}", message)

    # -- MQTT ----------------------------------------------------------------------------

    async def _on_mqtt(self, topic: str, payload: bytes) -> None:
        await self.twin.handle_mqtt(topic, payload)

    async def _publish(self, topic: str, payload: bytes) -> None:
        try:
            await self._publish_checked(topic, payload)
        except NotConnected as exc:
            # Results and deltas are for listeners present now; the twins themselves are kept.
            log.warning("not published: %s", exc)

    async def _publish_checked(self, topic: str, payload: bytes) -> None:
        if self.eventbus is not None:
            await self.eventbus.publish(topic, payload)


def _valid_filter(topic: str) -> bool:
    try:
        validate_topic_filter(topic)
    except ValueError:
        return False
    return True
