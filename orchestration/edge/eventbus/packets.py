"""MQTT 3.1.1 packet codec (OASIS standard, protocol "MQTT" level 4; "MQIsdp" level 3 too).

Decoding is strict: a peer that breaks the spec gets a :class:`ProtocolError` naming what it
broke, and the broker closes only that connection. Sizes a peer controls are capped: the whole
packet by ``max_packet_size`` (checked from the fixed header, before the body is read), every
string by its 2-byte length.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "CONNACK_ACCEPTED",
    "CONNACK_BAD_CREDENTIALS",
    "CONNACK_IDENTIFIER_REJECTED",
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_SERVER_UNAVAILABLE",
    "CONNACK_UNACCEPTABLE_PROTOCOL",
    "DEFAULT_MAX_PACKET_SIZE",
    "SUBACK_FAILURE",
    "Connack",
    "Connect",
    "ConnectRefused",
    "Disconnect",
    "Packet",
    "PacketReader",
    "PacketTooLarge",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "ProtocolError",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "decode",
    "encode",
    "encode_publish",
    "validate_topic_filter",
    "validate_topic_name",
]

DEFAULT_MAX_PACKET_SIZE = 1 << 20
_MAX_REMAINING_LENGTH = 268_435_455  # four 7-bit digits

CONNACK_ACCEPTED = 0
CONNACK_UNACCEPTABLE_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_CREDENTIALS = 4
CONNACK_NOT_AUTHORIZED = 5
SUBACK_FAILURE = 0x80


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ProtocolError(ValueError):
    """The bytes are not valid MQTT 3.1.1; the message says which rule they broke."""


class PacketTooLarge(ProtocolError):
    """The fixed header announces a packet above the configured cap."""


class ConnectRefused(ProtocolError):
    """A CONNECT the server must answer with a non-zero CONNACK before closing."""

    def __init__(self, return_code: int, reason: str) -> None:
        super().__init__(reason)
        self.return_code = return_code


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    clean_session: bool = True
    keepalive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = 4


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    return_code: int


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # present exactly when qos > 0


@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubrec:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubrel:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubcomp:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]  # (filter, requested QoS)


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    return_codes: tuple[int, ...]  # granted QoS or SUBACK_FAILURE, one per filter


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Pingreq:
    pass


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


Packet = (
    Connect | Connack | Publish | Puback | Pubrec | Pubrel | Pubcomp | Subscribe | Suback
    | Unsubscribe | Unsuback | Pingreq | Pingresp | Disconnect
)  # fmt: skip

_ACKS: dict[int, type[Puback | Pubrec | Pubrel | Pubcomp | Unsuback]] = {
    PacketType.PUBACK: Puback,
    PacketType.PUBREC: Pubrec,
    PacketType.PUBREL: Pubrel,
    PacketType.PUBCOMP: Pubcomp,
    PacketType.UNSUBACK: Unsuback,
}
_EMPTY: dict[int, Pingreq | Pingresp | Disconnect] = {
    PacketType.PINGREQ: Pingreq(),
    PacketType.PINGRESP: Pingresp(),
    PacketType.DISCONNECT: Disconnect(),
}
_ACK_TYPES = {cls: kind for kind, cls in _ACKS.items()}
_EMPTY_TYPES = {type(p): kind for kind, p in _EMPTY.items()}
# Fixed-header flags every type but PUBLISH must carry (spec table 2.2).
_FLAGS = {t: (2 if t in (PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE) else 0)
          for t in PacketType}  # fmt: skip


# --- validation ---------------------------------------------------------------------------


def validate_topic_name(topic: str) -> None:
    """A topic a message is published to: non-empty, no wildcards, no U+0000."""
    if not topic:
        raise ProtocolError("empty topic name")
    if "+" in topic or "#" in topic:
        raise ProtocolError(f"wildcard in topic name {topic!r}")
    if "\x00" in topic:
        raise ProtocolError("U+0000 in topic name")


def validate_topic_filter(topic_filter: str) -> None:
    """'#' only as the whole last level, '+' only as a whole level."""
    if not topic_filter:
        raise ProtocolError("empty topic filter")
    if "\x00" in topic_filter:
        raise ProtocolError("U+0000 in topic filter")
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ProtocolError(f"'#' must be the whole last level in {topic_filter!r}")
        if "+" in level and level != "+":
            raise ProtocolError(f"'+' must be a whole level in {topic_filter!r}")


# --- encoding -----------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n > _MAX_REMAINING_LENGTH:
        raise ValueError(f"packet body of {n} bytes exceeds the MQTT maximum")
    out = bytearray()
    while True:
        digit, n = n & 0x7F, n >> 7
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode()
    return _bin(raw)


def _bin(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise ValueError(f"field of {len(raw)} bytes exceeds 65535")
    return len(raw).to_bytes(2, "big") + raw


def encode_publish(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int | None
) -> bytes:
    """The hot path of the broker, so spelled out rather than going through :func:`encode`."""
    raw = topic.encode()
    if len(raw) > 0xFFFF:
        raise ValueError("topic longer than 65535 bytes")
    first = 0x30 | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
    ident = packet_id.to_bytes(2, "big") if qos and packet_id is not None else b""
    body_len = 2 + len(raw) + len(ident) + len(payload)
    return b"".join(
        (bytes((first,)), _length(body_len), len(raw).to_bytes(2, "big"), raw, ident, payload)
    )


def _frame(kind: int, flags: int, body: bytes) -> bytes:
    return bytes(((kind << 4) | flags,)) + _length(len(body)) + body


def encode(packet: Packet) -> bytes:
    """Serialize any packet (both directions: the test clients use it too)."""
    if isinstance(packet, Publish):
        return encode_publish(
            packet.topic, packet.payload, packet.qos, packet.retain, packet.dup, packet.packet_id
        )
    if isinstance(packet, Puback | Pubrec | Pubrel | Pubcomp | Unsuback):
        kind = _ACK_TYPES[type(packet)]
        return _frame(kind, _FLAGS[PacketType(kind)], packet.packet_id.to_bytes(2, "big"))
    if isinstance(packet, Connack):
        body = bytes((1 if packet.session_present else 0, packet.return_code))
        return _frame(PacketType.CONNACK, 0, body)
    if isinstance(packet, Suback):
        body = packet.packet_id.to_bytes(2, "big") + bytes(packet.return_codes)
        return _frame(PacketType.SUBACK, 0, body)
    if isinstance(packet, Subscribe):
        parts = [packet.packet_id.to_bytes(2, "big")]
        parts += [_str(f) + bytes((q,)) for f, q in packet.topics]
        return _frame(PacketType.SUBSCRIBE, 2, b"".join(parts))
    if isinstance(packet, Unsubscribe):
        parts = [packet.packet_id.to_bytes(2, "big")] + [_str(f) for f in packet.topics]
        return _frame(PacketType.UNSUBSCRIBE, 2, b"".join(parts))
    if isinstance(packet, Connect):
        return _encode_connect(packet)
    return _frame(_EMPTY_TYPES[type(packet)], 0, b"")


def _encode_connect(c: Connect) -> bytes:
    flags = 2 if c.clean_session else 0
    payload = [_str(c.client_id)]
    if c.will is not None:
        flags |= 4 | (c.will.qos << 3) | (0x20 if c.will.retain else 0)
        payload += [_str(c.will.topic), _bin(c.will.payload)]
    if c.username is not None:
        flags |= 0x80
        payload.append(_str(c.username))
    if c.password is not None:
        flags |= 0x40
        payload.append(_bin(c.password))
    head = _str(c.protocol_name) + bytes((c.protocol_level, flags))
    body = head + c.keepalive.to_bytes(2, "big") + b"".join(payload)
    return _frame(PacketType.CONNECT, 0, body)


# --- decoding -----------------------------------------------------------------------------


def _u16(body: bytes, pos: int) -> int:
    if pos + 2 > len(body):
        raise ProtocolError("packet ends inside a 2-byte field")
    return (body[pos] << 8) | body[pos + 1]


def _read_bin(body: bytes, pos: int) -> tuple[bytes, int]:
    end = pos + 2 + _u16(body, pos)
    if end > len(body):
        raise ProtocolError("field length runs past the end of the packet")
    return body[pos + 2 : end], end


def _read_str(body: bytes, pos: int, what: str) -> tuple[str, int]:
    raw, pos = _read_bin(body, pos)
    try:
        # Strict UTF-8 also refuses surrogates and overlong forms, as the spec requires.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} is not valid UTF-8 ({e.reason})") from None
    if "\x00" in text:
        raise ProtocolError(f"U+0000 in {what}")
    return text, pos


def _packet_id(body: bytes, pos: int) -> int:
    ident = _u16(body, pos)
    if ident == 0:
        raise ProtocolError("packet identifier 0")
    return ident


def decode(first: int, body: bytes) -> Packet:
    """One packet from its first byte and its body (what follows the remaining length)."""
    kind, flags = first >> 4, first & 0x0F
    if kind == PacketType.PUBLISH:
        return _decode_publish(flags, body)
    if kind < PacketType.CONNECT or kind > PacketType.DISCONNECT:
        raise ProtocolError(f"reserved packet type {kind}")
    ptype = PacketType(kind)
    if flags != _FLAGS[ptype]:
        raise ProtocolError(f"{ptype.name} with invalid fixed-header flags {flags:#x}")
    if ptype in _ACKS:
        if len(body) != 2:
            raise ProtocolError(f"{ptype.name} remaining length {len(body)}, expected 2")
        return _ACKS[ptype](_packet_id(body, 0))
    if ptype in _EMPTY:
        if body:
            raise ProtocolError(f"{ptype.name} remaining length {len(body)}, expected 0")
        return _EMPTY[ptype]
    if ptype == PacketType.CONNECT:
        return _decode_connect(body)
    if ptype == PacketType.SUBSCRIBE:
        return _decode_subscribe(body)
    if ptype == PacketType.UNSUBSCRIBE:
        return _decode_unsubscribe(body)
    if ptype == PacketType.CONNACK:
        if len(body) != 2 or body[0] & 0xFE:
            raise ProtocolError("malformed CONNACK")
        return Connack(bool(body[0] & 1), body[1])
    # SUBACK
    ident = _packet_id(body, 0)
    codes = tuple(body[2:])
    if not codes or any(c not in (0, 1, 2, SUBACK_FAILURE) for c in codes):
        raise ProtocolError("malformed SUBACK")
    return Suback(ident, codes)


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    dup = bool(flags & 8)
    if dup and not qos:
        raise ProtocolError("PUBLISH with DUP set at QoS 0")
    topic, pos = _read_str(body, 0, "topic name")
    validate_topic_name(topic)
    ident = None
    if qos:
        ident = _packet_id(body, pos)
        pos += 2
    return Publish(topic, body[pos:], qos, bool(flags & 1), dup, ident)


def _decode_connect(body: bytes) -> Connect:
    name, pos = _read_str(body, 0, "protocol name")
    if name not in ("MQTT", "MQIsdp"):
        raise ProtocolError(f"unknown protocol name {name!r}")
    if pos + 4 > len(body):
        raise ProtocolError("CONNECT variable header truncated")
    level, flags = body[pos], body[pos + 1]
    expected = 4 if name == "MQTT" else 3
    if level != expected:
        # Checked before the rest: an MQTT 5 CONNECT carries properties we do not parse.
        raise ConnectRefused(
            CONNACK_UNACCEPTABLE_PROTOCOL, f"unsupported protocol {name!r} level {level}"
        )
    if flags & 1:
        raise ProtocolError("CONNECT reserved flag set")
    keepalive = _u16(body, pos + 2)
    pos += 4
    client_id, pos = _read_str(body, pos, "client id")
    will = None
    will_qos = (flags >> 3) & 3
    if flags & 4:
        if will_qos == 3:
            raise ProtocolError("will QoS 3")
        will_topic, pos = _read_str(body, pos, "will topic")
        validate_topic_name(will_topic)
        will_payload, pos = _read_bin(body, pos)
        will = Will(will_topic, will_payload, will_qos, bool(flags & 0x20))
    elif flags & 0x38:
        raise ProtocolError("will QoS or retain set without the will flag")
    username = password = None
    if flags & 0x80:
        username, pos = _read_str(body, pos, "user name")
    if flags & 0x40:
        if username is None:
            raise ProtocolError("password flag without user name flag")
        password, pos = _read_bin(body, pos)
    if pos != len(body):
        raise ProtocolError(f"{len(body) - pos} trailing bytes after CONNECT payload")
    return Connect(client_id, bool(flags & 2), keepalive, will, username, password, name, level)


def _decode_subscribe(body: bytes) -> Subscribe:
    ident = _packet_id(body, 0)
    pos, topics = 2, []
    while pos < len(body):
        topic_filter, pos = _read_str(body, pos, "topic filter")
        validate_topic_filter(topic_filter)
        if pos >= len(body):
            raise ProtocolError("SUBSCRIBE filter without requested QoS")
        qos = body[pos]
        if qos > 2:
            raise ProtocolError(f"SUBSCRIBE requested QoS byte {qos:#x}")
        topics.append((topic_filter, qos))
        pos += 1
    if not topics:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(ident, tuple(topics))


def _decode_unsubscribe(body: bytes) -> Unsubscribe:
    ident = _packet_id(body, 0)
    pos, topics = 2, []
    while pos < len(body):
        topic_filter, pos = _read_str(body, pos, "topic filter")
        validate_topic_filter(topic_filter)
        topics.append(topic_filter)
    if not topics:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(ident, tuple(topics))


class PacketReader:
    """Reads whole packets off a stream, refusing any above ``max_packet_size`` bytes."""

    def __init__(
        self, reader: asyncio.StreamReader, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    ) -> None:
        if max_packet_size < 2:
            raise ValueError("max_packet_size must be at least 2 bytes")
        self._reader = reader
        self.max_packet_size = max_packet_size

    async def read(self) -> Packet | None:
        """The next packet, or None on a clean end of stream between packets."""
        readexactly = self._reader.readexactly
        try:
            # Every packet is at least 2 bytes: one read covers short remaining lengths.
            head = await readexactly(2)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                return None
            raise ProtocolError("stream ended inside a fixed header") from None
        try:
            digit = head[1]
            length, shift, size = digit & 0x7F, 7, 1
            while digit & 0x80:
                if size == 4:
                    raise ProtocolError("remaining length longer than 4 bytes")
                digit = (await readexactly(1))[0]
                length |= (digit & 0x7F) << shift
                shift, size = shift + 7, size + 1
            total = 1 + size + length
            if total > self.max_packet_size:
                raise PacketTooLarge(
                    f"packet of {total} bytes exceeds the {self.max_packet_size}-byte limit"
                )
            body = await readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            raise ProtocolError("stream ended inside a packet") from None
        return decode(head[0], body)
