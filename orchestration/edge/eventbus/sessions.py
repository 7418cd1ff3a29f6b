"""Per-client session state: subscriptions, QoS 1 messages in flight and queued, QoS 2 ids.

Outbound QoS is at most 1 (the broker grants QoS 1 when 2 is asked), so the only outbound
state is "sent, awaiting PUBACK". A session keeps at most ``max_inflight`` of those; later QoS 1
messages wait in a queue of at most ``queue_limit`` and are dropped (counted, logged) beyond
it, whether the client is slow or offline. QoS 0 messages are never queued: sent when the
client is connected, discarded otherwise (mosquitto's default, ``queue_qos0_messages false``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from .packets import encode_publish

__all__ = ["Message", "Outlet", "Session"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """An application message on its way to one subscriber, at QoS 1."""

    topic: str
    payload: bytes
    retain: bool = False


class Outlet(Protocol):
    """Where a connected session writes its packets (the client's connection)."""

    def send(self, data: bytes) -> None: ...


class Session:
    def __init__(self, client_id: str, clean: bool, max_inflight: int, queue_limit: int) -> None:
        self.client_id = client_id
        self.clean = clean
        self.connection: Outlet | None = None
        self.subscriptions: dict[str, int] = {}  # filter -> granted QoS
        # Inbound QoS 2 ids delivered but not yet released by PUBREL: a resent PUBLISH with one
        # of these is acknowledged again but not delivered twice. At most 65535 (the id space).
        self.qos2_received: set[int] = set()
        self.dropped = 0  # QoS 1 messages lost to a full queue, over the session's life
        self._inflight: dict[int, Message] = {}  # packet id -> message, in send order
        self._queue: deque[Message] = deque()
        self._max_inflight = max_inflight
        self._queue_limit = queue_limit
        self._next_id = 0
        self._dropping = 0  # drops since the queue last had room, for one log line per burst

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def send(self, data: bytes) -> None:
        """A ready-encoded QoS 0 packet: to the client if connected, else nowhere."""
        if self.connection is not None:
            self.connection.send(data)

    def deliver(self, message: Message) -> None:
        """A QoS 1 message: sent if the window allows, else queued behind earlier ones."""
        if (
            self.connection is not None
            and not self._queue
            and (len(self._inflight) < self._max_inflight)
        ):
            self._transmit(message)
        elif len(self._queue) < self._queue_limit:
            self._queue.append(message)
        else:
            self.dropped += 1
            self._dropping += 1
            if self._dropping == 1:
                state = "offline" if self.connection is None else "not acknowledging"
                log.warning(
                    "session %s (%s): queue of %d QoS 1 messages full, dropping messages",
                    self.client_id, state, self._queue_limit,
                )  # fmt: skip

    def acknowledge(self, packet_id: int) -> bool:
        """PUBACK: frees a slot in the window for the next queued message."""
        if self._inflight.pop(packet_id, None) is None:
            return False
        self._pump()
        return True

    def resume(self, outlet: Outlet) -> None:
        """Reconnected: resend what was unacknowledged (DUP, same ids), then the queue."""
        self.connection = outlet
        for packet_id, m in self._inflight.items():
            outlet.send(encode_publish(m.topic, m.payload, 1, m.retain, True, packet_id))
        self._pump()

    def _pump(self) -> None:
        while (
            self._queue
            and self.connection is not None
            and (len(self._inflight) < self._max_inflight)
        ):
            self._transmit(self._queue.popleft())
        if self._dropping and len(self._queue) < self._queue_limit:
            log.warning(
                "session %s: dropped %d QoS 1 messages while its queue was full (%d in all)",
                self.client_id, self._dropping, self.dropped,
            )  # fmt: skip
            self._dropping = 0

    def _transmit(self, message: Message) -> None:
        packet_id = self._allocate_id()
        self._inflight[packet_id] = message
        assert self.connection is not None
        self.connection.send(
            encode_publish(message.topic, message.payload, 1, message.retain, False, packet_id)
        )

    def _allocate_id(self) -> int:
        while True:  # ends: at most max_inflight (< 65535) ids are in use
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._inflight:
                return self._next_id
