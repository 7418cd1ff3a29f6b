"""The embedded MQTT 3.1.1 broker: KubeEdge's "internal broker" mode, nothing to install.

It behaves like mosquitto 2.0 for what a KubeEdge app or mapper does (the tests run the same
scenarios against both), including publishes to ``$hw/events/...``, which some Python brokers
refuse. Differences, on purpose:

* QoS 2 is accepted inbound (exactly once, PUBREC/PUBREL/PUBCOMP) but granted as QoS 1 on
  SUBSCRIBE, so a subscriber receives at QoS min(publish QoS, 1); SUBACK says so.
* MQTT 5 is refused with CONNACK 1 (unacceptable protocol level).
* Anonymous and plain TCP only: no authentication, no TLS. It listens on 127.0.0.1 by default,
  where only the node's own processes reach it; do not bind it to an outside address.

Everything a peer controls is bounded: packet size (``max_packet_size``), bytes buffered to a
client that does not read (``max_buffered``, then it is disconnected), QoS 1 messages in flight
(``max_inflight``) and queued (``session_queue``) per session, connections
(``max_connections``), offline persistent sessions (``max_connections``, the oldest forgotten
first), subscriptions per session (``max_subscriptions``) and retained topics
(``max_retained``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType

from .connection import Connection
from .matching import SubscriptionTree, topic_matches
from .packets import DEFAULT_MAX_PACKET_SIZE, encode_publish, validate_topic_name
from .sessions import Message, Session

__all__ = ["Broker", "Listener"]

Listener = Callable[[str, bytes], None]  # must not block: it runs inside the broker's routing

log = logging.getLogger(__name__)


class Broker:
    """An MQTT 3.1.1 broker on one TCP listener, with an in-process :meth:`publish`."""

    connect_timeout = 10.0  # seconds a new connection has to send CONNECT
    max_subscriptions = 4096  # per session; SUBACK reports failure (0x80) beyond
    max_retained = 10_000  # retained topics; a new one beyond is delivered but not retained

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        session_queue: int = 100,
        max_inflight: int = 20,
        max_connections: int = 1000,
    ) -> None:
        if max_packet_size < 64:
            raise ValueError("max_packet_size must be at least 64 bytes")
        if session_queue < 0 or not 1 <= max_inflight <= 0xFFFE or max_connections < 1:
            raise ValueError("session_queue >= 0, 1 <= max_inflight < 65535, max_connections >= 1")
        self.host = host
        self._requested_port = port
        self.max_packet_size = max_packet_size
        self.session_queue = session_queue
        self.max_inflight = max_inflight
        self.max_connections = max_connections
        # Room for a few packets of the largest size before a client counts as not reading.
        self.max_buffered = max(4 * max_packet_size, 256 * 1024)
        self._server: asyncio.Server | None = None
        self._stopping = False
        self._connections: dict[Connection, asyncio.Task[None]] = {}
        self._sessions: dict[str, Session] = {}
        self._online: dict[str, Connection] = {}  # client id -> the connection that owns it
        self._offline: dict[str, None] = {}  # persistent sessions without a client, oldest first
        self._tree = SubscriptionTree()
        self._retained: dict[str, tuple[bytes, int]] = {}  # topic -> (payload, QoS)
        self._listeners: list[tuple[Callable[[str], bool], Listener]] = []

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port once started (port 0 picks a free one), else the requested one."""
        if self._server is None or not self._server.sockets:
            return self._requested_port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("broker already started")
        self._server = await asyncio.start_server(
            self._accept, self.host, self._requested_port, reuse_address=True
        )
        log.info("MQTT broker listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their tasks to end."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        try:
            server.close()
            for conn in list(self._connections):
                conn.shutdown()
            if self._connections:
                await asyncio.gather(*self._connections.values(), return_exceptions=True)
            await server.wait_closed()
        finally:
            self._stopping = False
        log.info("MQTT broker stopped")

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def stats(self) -> dict[str, int]:
        return {
            "connections": len(self._connections),
            "sessions": len(self._sessions),
            "offline_sessions": len(self._offline),
            "retained": len(self._retained),
            "dropped": sum(s.dropped for s in self._sessions.values()),
        }

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the task is created and tracked here, at accept
        # time, so stop() can never miss a connection that has not started running yet.
        if self._stopping:
            writer.transport.abort()
            return
        if len(self._connections) >= self.max_connections:
            log.warning(
                "refused a connection from %s: %d connections open (max_connections)",
                writer.get_extra_info("peername"), len(self._connections),
            )  # fmt: skip
            writer.transport.abort()
            return
        conn = Connection(self, reader, writer)
        task = asyncio.get_running_loop().create_task(conn.run(), name=f"mqtt-{conn.peer}")
        self._connections[conn] = task
        task.add_done_callback(lambda _: self._connections.pop(conn, None))

    # --- publishing -------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish from inside the process, as a client would, without a socket."""
        validate_topic_name(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS {qos}")
        self.route(topic, bytes(payload), qos, retain)

    def listen(self, matches: Callable[[str], bool], listener: Listener) -> Callable[[], None]:
        """Call ``listener(topic, payload)`` for every message whose topic ``matches`` (an
        in-process subscriber: EdgeCore's own EventBus); returns what removes it."""
        entry = (matches, listener)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry) if entry in self._listeners else None

    def route(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Deliver one application message to every matching session, once per client."""
        if retain:
            self._retain(topic, payload, qos)
        for matches, listener in self._listeners:
            if matches(topic):
                listener(topic, payload)
        targets = self._tree.match(topic)
        if not targets:
            return
        sessions = self._sessions
        message: Message | None = None
        packet: bytes | None = None  # one encoding shared by every QoS 0 receiver
        for client_id, granted in targets.items():
            session = sessions[client_id]
            if qos and granted:
                if message is None:
                    message = Message(topic, payload)
                session.deliver(message)
            else:
                if packet is None:
                    packet = encode_publish(topic, payload, 0, False, False, None)
                session.send(packet)

    def _retain(self, topic: str, payload: bytes, qos: int) -> None:
        if not payload:
            self._retained.pop(topic, None)
        elif topic in self._retained or len(self._retained) < self.max_retained:
            self._retained[topic] = (payload, qos)
        else:
            log.warning("not retaining %s: %d topics retained already", topic, self.max_retained)

    def send_retained(self, session: Session, topic_filter: str, granted: int) -> None:
        if "+" in topic_filter or "#" in topic_filter:
            found = [(t, m) for t, m in self._retained.items() if topic_matches(topic_filter, t)]
        elif (retained := self._retained.get(topic_filter)) is not None:
            found = [(topic_filter, retained)]
        else:
            return
        for topic, (payload, qos) in found:
            if min(qos, granted):
                session.deliver(Message(topic, payload, retain=True))
            else:
                session.send(encode_publish(topic, payload, 0, True, False, None))

    # --- sessions (called by Connection) ----------------------------------------------------

    def attach(self, conn: Connection, client_id: str, clean: bool) -> tuple[Session, bool]:
        """Bind a client id to a new connection: (its session, whether it was resumed)."""
        old = self._online.pop(client_id, None)
        session = self._sessions.get(client_id)
        if old is not None:
            # Like mosquitto: the displaced connection's will is published.
            will = old.take_will()
            old.close("taken over by a new connection with the same client id")
            if session is not None:
                session.connection = None
            if will is not None:
                self.route(will.topic, will.payload, will.qos, will.retain)
        if session is not None and (clean or session.clean):
            self._discard(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, clean, self.max_inflight, self.session_queue)
            self._sessions[client_id] = session
        else:
            self._offline.pop(client_id, None)
        self._online[client_id] = conn
        return session, present

    def detach(self, conn: Connection, session: Session) -> None:
        """The connection ended: drop a clean session, keep a persistent one offline."""
        if self._online.get(session.client_id) is not conn:
            return  # taken over: the session belongs to the newer connection
        del self._online[session.client_id]
        session.connection = None
        if session.clean:
            self._discard(session)
            return
        self._offline[session.client_id] = None
        while len(self._offline) > self.max_connections:
            oldest = self._sessions[next(iter(self._offline))]
            log.warning(
                "forgetting offline session %s (%d queued): over %d offline sessions",
                oldest.client_id, oldest.queued + oldest.inflight, self.max_connections,
            )  # fmt: skip
            self._discard(oldest)

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self._tree.remove(topic_filter, session.client_id)
        session.subscriptions.clear()
        del self._sessions[session.client_id]
        self._offline.pop(session.client_id, None)

    def subscribe(self, session: Session, topic_filter: str, qos: int) -> bool:
        subs = session.subscriptions
        if topic_filter not in subs and len(subs) >= self.max_subscriptions:
            log.warning(
                "session %s: refused subscription to %s: %d subscriptions already",
                session.client_id, topic_filter, len(subs),
            )  # fmt: skip
            return False
        subs[topic_filter] = qos
        self._tree.add(topic_filter, session.client_id, qos)
        return True

    def unsubscribe(self, session: Session, topic_filter: str) -> None:
        if session.subscriptions.pop(topic_filter, None) is not None:
            self._tree.remove(topic_filter, session.client_id)
