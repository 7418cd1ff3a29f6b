"""Store-and-forward envelopes: what one hub's spool sends to the other's receipts.

Every message that must survive a lost link is wrapped with its identity ``(source, seq)``
(``seq`` is persisted and never reused), a priority class, an optional coalescing key with
the state's resourceVersion, a creation time and an expiry (satellite.md §5.3). The sequence
identifies a message for deduplication; correctness never relies on timestamps, because an
edge clock drifts.

An envelope is framed as ``u32 header length | JSON header | payload`` so payloads (model
chunks) travel as bytes, not base64. ``size`` is what the link is charged; it equals the
payload's length except for *virtual* payloads, which a simulator uses to account for bulk
data it does not materialise.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "ACK",
    "DATA",
    "MAX_ENVELOPE",
    "Envelope",
    "EnvelopeError",
    "Priority",
]

MAX_ENVELOPE = 8 * 1024 * 1024  # a peer's frame is refused above this
_MAX_HEADER = 64 * 1024
_HEAD = struct.Struct("!I")

DATA, ACK = "data", "ack"


class Priority(enum.IntEnum):
    """Drained in this order within a contact (satellite.md §5.3 item 4)."""

    CONTROL = 0  # acknowledgements, desired state, abort/rollback
    RESULT = 1  # inference results, alerts
    STATUS = 2  # pod/node/twin status, heartbeats (coalesced by key)
    CHUNK = 3  # model and training-update chunks
    BULK = 4  # hard-example images, raw frames

    @property
    def is_bulk(self) -> bool:
        """Classes that get the reserved share and are shed first when storage runs out."""
        return self >= Priority.CHUNK


class EnvelopeError(ValueError):
    """A frame that is not a valid envelope; the message says what is wrong."""


@dataclass(slots=True)
class Envelope:
    source: str
    seq: int
    priority: Priority
    kind: str = DATA
    topic: str = ""  # what the receiver dispatches on (e.g. "status", "chunk", "result")
    key: str = ""  # coalescing key; "" for events and results, which are never coalesced
    rv: int = 0  # resourceVersion of the state under ``key``; newest wins at the receiver
    created: float = 0.0
    expires: float | None = None
    floor: int = 0  # the sender's lowest seq that may still arrive; all below are settled
    payload: bytes = b""
    size: int = -1  # bytes the link is charged; -1 = len(payload)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.payload)

    @property
    def ident(self) -> tuple[str, int]:
        return self.source, self.seq

    @property
    def wire_size(self) -> int:
        """Bytes on the link: the charged size plus the framing."""
        return self.size + 96 + len(self.key) + len(self.topic)

    def encode(self) -> bytes:
        header = {
            "src": self.source,
            "seq": self.seq,
            "pri": int(self.priority),
            "kind": self.kind,
            "topic": self.topic,
            "key": self.key,
            "rv": self.rv,
            "created": self.created,
            "expires": self.expires,
            "floor": self.floor,
            "size": self.size,
            "crc": zlib.crc32(self.payload),
            "meta": self.meta,
        }
        head = orjson.dumps(header)
        return _HEAD.pack(len(head)) + head + self.payload

    @classmethod
    def decode(cls, frame: bytes, *, max_size: int = MAX_ENVELOPE) -> Envelope:
        if len(frame) > max_size:
            raise EnvelopeError(f"envelope of {len(frame)} bytes is over the {max_size}-byte cap")
        if len(frame) < _HEAD.size:
            raise EnvelopeError("envelope is shorter than its length prefix")
        (n,) = _HEAD.unpack_from(frame)
        if n > _MAX_HEADER or _HEAD.size + n > len(frame):
            raise EnvelopeError(f"envelope header length {n} does not fit the frame")
        try:
            h = orjson.loads(frame[_HEAD.size : _HEAD.size + n])
        except orjson.JSONDecodeError as exc:
            raise EnvelopeError(f"envelope header is not JSON: {exc}") from None
        if not isinstance(h, dict):
            raise EnvelopeError("envelope header must be an object")
        payload = frame[_HEAD.size + n :]
        try:
            env = cls(
                source=_str(h, "src"),
                seq=_int(h, "seq"),
                priority=Priority(_int(h, "pri")),
                kind=_str(h, "kind"),
                topic=_str(h, "topic"),
                key=_str(h, "key"),
                rv=_int(h, "rv"),
                created=float(h.get("created") or 0.0),
                expires=None if h.get("expires") is None else float(h["expires"]),
                floor=_int(h, "floor"),
                payload=payload,
                size=_int(h, "size"),
                meta=h.get("meta") or {},
            )
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(f"bad envelope header: {exc}") from None
        if env.kind not in (DATA, ACK):
            raise EnvelopeError(f"envelope kind {env.kind!r} is neither {DATA!r} nor {ACK!r}")
        if not isinstance(env.meta, dict):
            raise EnvelopeError("envelope meta must be an object")
        if zlib.crc32(payload) != h.get("crc"):
            raise EnvelopeError(f"envelope {env.source}#{env.seq}: payload checksum mismatch")
        return env


def _str(h: dict[str, Any], name: str) -> str:
    value = h.get(name, "")
    if not isinstance(value, str) or len(value) > 4096:
        raise EnvelopeError(f"envelope field {name!r} must be a string of at most 4096 chars")
    return value


def _int(h: dict[str, Any], name: str) -> int:
    value = h.get(name, 0)
    # Bounded by SQLite's INTEGER, where sequences, versions and floors are stored.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise EnvelopeError(f"envelope field {name!r} must be an integer in [0, 2**63)")
    return value
