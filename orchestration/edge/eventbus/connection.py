"""One client connection: the MQTT 3.1.1 server side of the protocol, packet by packet.

Writes never wait. Packets go straight into the transport's buffer, and a client that lets
more than a bounded number of bytes pile up there (it is not reading) is disconnected, so a
slow consumer costs memory up to that bound and never time or other clients' messages. A
malformed packet, a packet out of order or a silent peer closes this connection only, with
the reason logged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .packets import (
    CONNACK_ACCEPTED,
    CONNACK_IDENTIFIER_REJECTED,
    SUBACK_FAILURE,
    Connack,
    Connect,
    ConnectRefused,
    Disconnect,
    Packet,
    PacketReader,
    Pingreq,
    Pingresp,
    ProtocolError,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)

if TYPE_CHECKING:
    from .broker import Broker
    from .sessions import Session

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_PINGRESP = encode(Pingresp())
_SHUTDOWN = "broker stopping"


class _Disconnected(Exception):
    """The client sent DISCONNECT: a graceful end, its will is discarded."""


class Connection:
    def __init__(
        self, broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._broker = broker
        self._packets = PacketReader(reader, broker.max_packet_size)
        self._writer = writer
        self._transport = writer.transport
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client_id: str | None = None
        self.session: Session | None = None
        self._will: Will | None = None
        self._reason: str | None = None  # set when the broker decides to close
        self._out_limit = broker.max_buffered
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._idle_limit = broker.connect_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._handlers: dict[type[Packet], Callable[[Any], None]] = {
            Publish: self._on_publish,
            Puback: self._on_puback,
            Pubrel: self._on_pubrel,
            Subscribe: self._on_subscribe,
            Unsubscribe: self._on_unsubscribe,
            Pingreq: self._on_pingreq,
            Disconnect: self._on_disconnect,
        }

    def __repr__(self) -> str:
        return f"<MQTT client {self.client_id or '?'} from {self.peer}>"

    # --- outgoing ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        transport = self._transport
        if self._reason is not None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self._out_limit:
            self.close(f"not reading: more than {self._out_limit} bytes waiting to be sent")

    def close(self, reason: str, *, publish_will: bool = True) -> None:
        """Drop the connection now (buffered output is discarded); ``run`` then cleans up."""
        if self._reason is None:
            self._reason = reason
        if not publish_will:
            self._will = None
        self._transport.abort()

    def shutdown(self) -> None:
        """The broker is stopping: close without publishing the will, and log it quietly."""
        self.close(_SHUTDOWN, publish_will=False)

    def take_will(self) -> Will | None:
        will, self._will = self._will, None
        return will

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        self._arm(self._idle_limit)
        graceful, error = False, None
        try:
            await self._serve()
        except _Disconnected:
            graceful = True
        except ProtocolError as e:
            error = f"protocol error: {e}"
        except OSError as e:
            error = f"connection error: {e!r}"
        except Exception:  # a bug here must cost one connection, never the broker
            log.exception("internal error serving %r", self)
            error = "internal error"
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if not self._transport.is_closing():
                self._transport.abort()
            self._finish(graceful, error)

    def _finish(self, graceful: bool, error: str | None) -> None:
        reason = self._reason or error
        will = None if graceful else self.take_will()
        if self.session is not None:
            self._broker.detach(self, self.session)
        if will is not None:
            self._broker.route(will.topic, will.payload, will.qos, will.retain)
        if graceful:
            log.debug("%r disconnected", self)
        elif reason is None:
            log.info("%r closed the connection without DISCONNECT", self)
        elif reason is _SHUTDOWN:
            log.info("closed %r: %s", self, reason)
        else:
            log.warning("closed %r: %s", self, reason)

    async def _serve(self) -> None:
        try:
            first = await self._packets.read()
        except ConnectRefused as e:
            self._refuse(e.return_code, str(e))
            return
        if first is None:
            return
        if not isinstance(first, Connect):
            raise ProtocolError(f"{type(first).__name__.upper()} before CONNECT")
        if not self._connect(first):
            return
        read, handlers, loop = self._packets.read, self._handlers, self._loop
        while (packet := await read()) is not None:
            self._last = loop.time()
            handler = handlers.get(type(packet))
            if handler is None:
                raise ProtocolError(f"unexpected {type(packet).__name__.upper()} from a client")
            handler(packet)

    def _connect(self, c: Connect) -> bool:
        client_id = c.client_id
        if not client_id:
            # mosquitto's rules: a generated id only for a clean session on MQTT 3.1.1.
            if not c.clean_session or c.protocol_level != 4:
                return self._refuse(CONNACK_IDENTIFIER_REJECTED, "empty client id")
            client_id = f"auto-{uuid.uuid4()}"
        self.client_id = client_id
        self._last = self._loop.time()
        self._will = c.will
        self.session, present = self._broker.attach(self, client_id, c.clean_session)
        self._writer.write(encode(Connack(present, CONNACK_ACCEPTED)))
        self.session.resume(self)
        log.debug("%r connected (clean %s, keepalive %ds)", self, c.clean_session, c.keepalive)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if c.keepalive:
            self._idle_limit = 1.5 * c.keepalive
            self._arm(self._idle_limit)
        return True

    def _refuse(self, code: int, why: str) -> bool:
        # The spec wants this CONNACK sent before closing: close() would discard it.
        self._transport.write(encode(Connack(False, code)))
        self._reason = f"refused with CONNACK {code}: {why}"
        self._writer.close()
        return False

    def _arm(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per keepalive period, not one per packet: it re-arms for what is left.
        idle = self._loop.time() - self._last
        if idle < self._idle_limit:
            self._arm(self._idle_limit - idle)
        elif self.client_id is None:
            self.close(f"no CONNECT within {self._idle_limit:g}s")
        else:
            self.close(f"keepalive expired: nothing received for {idle:.1f}s")

    # --- packets from the client ------------------------------------------------------------

    def _on_publish(self, p: Publish) -> None:
        if p.qos == 0:
            self._broker.route(p.topic, p.payload, 0, p.retain)
            return
        assert p.packet_id is not None and self.session is not None
        if p.qos == 1:
            self._broker.route(p.topic, p.payload, 1, p.retain)
            self.send(encode(Puback(p.packet_id)))
            return
        # QoS 2, delivered on PUBLISH and remembered until PUBREL so a resend is not delivered
        # twice (the spec's method B: no copy of the message is kept).
        received = self.session.qos2_received
        if p.packet_id not in received:
            received.add(p.packet_id)
            self._broker.route(p.topic, p.payload, 2, p.retain)
        self.send(encode(Pubrec(p.packet_id)))

    def _on_pubrel(self, p: Pubrel) -> None:
        assert self.session is not None
        self.session.qos2_received.discard(p.packet_id)
        self.send(encode(Pubcomp(p.packet_id)))

    def _on_puback(self, p: Puback) -> None:
        assert self.session is not None
        if not self.session.acknowledge(p.packet_id):
            log.debug("%r: PUBACK for unknown packet id %d", self, p.packet_id)

    def _on_subscribe(self, p: Subscribe) -> None:
        assert self.session is not None
        codes, granted = [], []
        for topic_filter, qos in p.topics:
            # Outbound QoS 2 is not implemented: grant 1, which SUBACK tells the client.
            qos = min(qos, 1)
            if self._broker.subscribe(self.session, topic_filter, qos):
                codes.append(qos)
                granted.append((topic_filter, qos))
            else:
                codes.append(SUBACK_FAILURE)
        self.send(encode(Suback(p.packet_id, tuple(codes))))
        for topic_filter, qos in granted:
            self._broker.send_retained(self.session, topic_filter, qos)

    def _on_unsubscribe(self, p: Unsubscribe) -> None:
        assert self.session is not None
        for topic_filter in p.topics:
            self._broker.unsubscribe(self.session, topic_filter)
        self.send(encode(Unsuback(p.packet_id)))

    def _on_pingreq(self, _: Packet) -> None:
        self.send(_PINGRESP)

    def _on_disconnect(self, _: Packet) -> None:
        self._will = None
        raise _Disconnected
