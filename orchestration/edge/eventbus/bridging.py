"""EventBus: EdgeCore's MQTT client, between the node's broker and DeviceTwin (kubeedge.md §5.4).

It subscribes to KubeEdge's device and node topics (QoS 1) on the broker, the embedded one or an
external mosquitto, hands every message on them to ``on_device(topic, payload)`` and publishes
what EdgeCore asks (twin results, deltas, documents, membership). The topics the cloud's
router Rules name (``forward``) are subscribed too, and what arrives on them goes to
``on_upload(topic, payload)``. A lost broker is reconnected
with back-off; what DeviceTwin holds is durable, so a publication that finds no broker is
dropped with a log line, never queued without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable

import aiomqtt

from .matching import topic_matches

__all__ = ["DEVICE_TOPICS", "EventBus", "NotConnected"]

log = logging.getLogger(__name__)

# What the twin module answers (kubeedge.md §5.4); results it publishes are one level deeper
# (``.../twin/update/result``), so these filters never hand the node its own answers back.
DEVICE_TOPICS = (
    "$hw/events/device/+/+/twin/+",
    "$hw/events/device/+/+/state/update",
    "$hw/events/node/+/membership/get",
)

_MAX_QUEUED = 10_000
_TWIN_PREFIXES = ("$hw/events/device/", "$hw/events/node/")

OnMessage = Callable[[str, bytes], Awaitable[None]]


class NotConnected(ConnectionError):
    """No broker connection at the moment."""


class EventBus:
    """``host``/``port``: the broker. ``on_device`` is awaited for each message, one at a time
    in arrival order (the order an app published its updates in)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        node_name: str,
        on_device: OnMessage,
        on_upload: OnMessage | None = None,
        reconnect_backoff: tuple[float, float] = (0.2, 10.0),
        keepalive: int = 30,
    ) -> None:
        self.host = host
        self.port = port
        self.node_name = node_name
        self._on_device = on_device
        self._on_upload = on_upload
        self._forwarded: frozenset[str] = frozenset()
        self._backoff = reconnect_backoff
        self._keepalive = keepalive
        # One id per EdgeCore run: a second node on the same broker must not take it over.
        self._identifier = f"edgecore-{node_name}-{uuid.uuid4().hex[:8]}"
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"eventbus-{self.node_name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    @property
    def forwarded(self) -> frozenset[str]:
        """The router's topics this bus subscribes to for ``on_upload``."""
        return self._forwarded

    async def forward(self, topics: frozenset[str]) -> None:
        """Subscribe to exactly ``topics`` (besides the device topics) for ``on_upload``."""
        old, self._forwarded = self._forwarded, topics
        client = self._client
        if client is None:
            return  # subscribed on the next connect
        try:
            for topic in sorted(topics - old):
                await client.subscribe(topic, qos=1)
            for topic in sorted(old - topics):
                await client.unsubscribe(topic)
        except aiomqtt.MqttError as exc:
            log.warning("EventBus: changing subscriptions: %s", exc)  # redone on reconnect

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish on the broker; NotConnected when there is none right now."""
        client = self._client
        if client is None:
            raise NotConnected(f"no MQTT broker connection for {topic}")
        try:
            await client.publish(topic, payload, qos=qos)
        except aiomqtt.MqttError as exc:
            raise NotConnected(f"publishing {topic}: {exc}") from exc

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self._identifier,
                    keepalive=self._keepalive,
                    clean_session=True,
                    # A flood from a local app is dropped here rather than filling memory.
                    max_queued_incoming_messages=_MAX_QUEUED,
                ) as client:
                    for topic in (*DEVICE_TOPICS, *sorted(self._forwarded)):
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    self._connected.set()
                    failures = 0
                    log.info("EventBus connected to the MQTT broker at %s:%d", self.host, self.port)
                    async for message in client.messages:
                        await self._deliver(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.warning("MQTT broker %s:%d: %s", self.host, self.port, exc)
            finally:
                self._client = None
                self._connected.clear()
            low, high = self._backoff
            delay = min(high, low * 2**failures) * (0.5 + random.random() / 2)
            failures = min(failures + 1, 16)
            await asyncio.sleep(delay)

    async def _deliver(self, topic: str, payload: object) -> None:
        if not isinstance(payload, bytes | bytearray):
            return  # aiomqtt hands bytes for every MQTT message; nothing else can arrive
        handler: OnMessage | None = self._on_device
        if not topic.startswith(_TWIN_PREFIXES):
            forwarded = any(topic_matches(f, topic) for f in self._forwarded)
            handler = self._on_upload if forwarded else None
        if handler is None:
            return
        try:
            await handler(topic, bytes(payload))
        except Exception:  # one bad message must not end the subscription
            log.exception("handling MQTT message on %s failed", topic)
