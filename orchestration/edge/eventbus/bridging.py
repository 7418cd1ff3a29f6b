"""EventBus: EdgeCore's side of the node's MQTT bus (kubeedge.md §5.4).

It takes what apps and mappers publish on KubeEdge's device and node topics to
``on_device(topic, payload)``, and what they publish on KubeEdge's upload topics and on the
topics the cloud's router Rules name (``forward``) to ``on_upload(topic, payload)``; and it
publishes what EdgeCore asks (twin results, deltas, documents, membership, router messages).
With the embedded broker it is an in-process listener on it (no socket, no MQTT client
loaded); with an external broker (mosquitto) it is an MQTT client that subscribes at QoS 1
and reconnects with back-off. Either way, messages are handed on one at a time in arrival
order (the order an app published its updates in), and a flood beyond ``_MAX_QUEUED`` is
dropped with a log line rather than filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..hub import backoff_delay
from .broker import Broker
from .matching import topic_matches

__all__ = ["DEVICE_TOPICS", "UPLOAD_TOPICS", "EventBus", "NotConnected"]

log = logging.getLogger(__name__)

# What the twin module answers (kubeedge.md §5.4); results it publishes are one level deeper
# (``.../twin/update/result``), so these filters never hand the node its own answers back.
DEVICE_TOPICS = (
    "$hw/events/device/+/+/twin/+",
    "$hw/events/device/+/+/state/update",
    "$hw/events/node/+/membership/get",
)
# Sent up to the cloud's router whatever the Rules say (KubeEdge's EventBus subscribes to them).
UPLOAD_TOPICS = ("$hw/events/upload/#", "SYS/dis/upload_records", "+/user/#")
_MAX_QUEUED = 10_000
_TWIN_PREFIXES = ("$hw/events/device/", "$hw/events/node/")

OnMessage = Callable[[str, bytes], Awaitable[None]]


class NotConnected(ConnectionError):
    """No broker connection at the moment."""


class EventBus:
    """On ``broker`` (embedded, in-process) or on the broker at ``host``:``port``."""

    def __init__(
        self,
        *,
        node_name: str,
        on_device: OnMessage,
        on_upload: OnMessage | None = None,
        broker: Broker | None = None,
        host: str = "127.0.0.1",
        port: int = 1883,
        reconnect_backoff: tuple[float, float] = (0.2, 10.0),
        keepalive: int = 30,
    ) -> None:
        self.node_name = node_name
        self.broker = broker
        self.host = host
        self.port = port
        self._on_device = on_device
        self._on_upload = on_upload
        self._forwarded: frozenset[str] = frozenset()
        self._backoff = reconnect_backoff
        self._keepalive = keepalive
        # One id per EdgeCore run: a second node on the same broker must not take it over.
        self._identifier = f"edgecore-{node_name}-{uuid.uuid4().hex[:8]}"
        self._client: Any = None  # aiomqtt.Client while connected to an external broker
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(_MAX_QUEUED)
        self._dropped = 0
        self._unlisten: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._unlisten is not None or self._client is not None

    @property
    def forwarded(self) -> frozenset[str]:
        """The router's topics whose messages go to ``on_upload``."""
        return self._forwarded

    async def start(self) -> None:
        if self._task is not None:
            return
        if self.broker is not None:
            self._unlisten = self.broker.listen(self._wanted, self._enqueue)
            self._task = asyncio.create_task(self._drain(), name=f"eventbus-{self.node_name}")
        else:
            self._task = asyncio.create_task(self._run(), name=f"eventbus-{self.node_name}")

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
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

    async def forward(self, topics: frozenset[str]) -> None:
        """Hand messages on exactly ``topics`` (besides the device topics) to ``on_upload``."""
        old, self._forwarded = self._forwarded, topics
        client = self._client
        if client is None:
            return  # in-process: ``_wanted`` reads the set; a client subscribes on connect
        import aiomqtt

        try:
            for topic in sorted(topics - old):
                await client.subscribe(topic, qos=1)
            for topic in sorted(old - topics):
                await client.unsubscribe(topic)
        except aiomqtt.MqttError as exc:
            log.warning("EventBus: changing subscriptions: %s", exc)  # redone on reconnect

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish on the bus; NotConnected when an external broker is unreachable now."""
        if self.broker is not None:
            await self.broker.publish(topic, payload, qos=qos)
            return
        client = self._client
        if client is None:
            raise NotConnected(f"no MQTT broker connection for {topic}")
        import aiomqtt

        try:
            await client.publish(topic, payload, qos=qos)
        except aiomqtt.MqttError as exc:
            raise NotConnected(f"publishing {topic}: {exc}") from exc

    # -- in-process, on the embedded broker ----------------------------------------------

    def _wanted(self, topic: str) -> bool:
        if topic.startswith(_TWIN_PREFIXES):
            return any(topic_matches(f, topic) for f in DEVICE_TOPICS)
        return self._uploaded(topic)

    def _uploaded(self, topic: str) -> bool:
        return any(topic_matches(f, topic) for f in (*UPLOAD_TOPICS, *self._forwarded))

    def _enqueue(self, topic: str, payload: bytes) -> None:
        try:
            self._queue.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("EventBus: %d messages dropped, %s among them", self._dropped, topic)

    async def _drain(self) -> None:
        while True:
            topic, payload = await self._queue.get()
            await self._deliver(topic, payload)

    # -- as a client of an external broker -----------------------------------------------

    async def _run(self) -> None:
        import aiomqtt  # only an external broker needs an MQTT client in this process

        failures = 0
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self._identifier,
                    keepalive=self._keepalive,
                    clean_session=True,
                    max_queued_incoming_messages=_MAX_QUEUED,
                ) as client:
                    for topic in (*DEVICE_TOPICS, *UPLOAD_TOPICS, *sorted(self._forwarded)):
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    failures = 0
                    log.info("EventBus connected to the MQTT broker at %s:%d", self.host, self.port)
                    async for message in client.messages:
                        if isinstance(message.payload, bytes | bytearray):
                            await self._deliver(str(message.topic), bytes(message.payload))
            except aiomqtt.MqttError as exc:
                log.warning("MQTT broker %s:%d: %s", self.host, self.port, exc)
            finally:
                self._client = None
            await asyncio.sleep(backoff_delay(failures, *self._backoff))
            failures += 1

    async def _deliver(self, topic: str, payload: bytes) -> None:
        handler: OnMessage | None = self._on_device
        if not topic.startswith(_TWIN_PREFIXES):
            handler = self._on_upload if self._uploaded(topic) else None
        if handler is None:
            return
        try:
            await handler(topic, payload)
        except Exception:  # one bad message must not end the subscription
            log.exception("handling MQTT message on %s failed", topic)
