"""One end of a store-and-forward link: a spool out, receipts in, blob transfers both ways.

Sans-IO: nothing here knows about sockets or clocks. A transport (the hubs' WebSocket, the
satellite simulator's virtual link) asks ``outgoing(budget, now)`` for what to send, hands
what arrives to ``incoming``, and calls ``link_up``/``link_down`` as the contact comes and
goes. That is how the hubs and the simulator run the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from .envelopes import ACK, Envelope, EnvelopeError, Priority
from .receipts import Receipts, Verdict, ack_ranges
from .spooling import Spool
from .transfers import (
    CHUNK_TOPIC,
    MANIFEST_TOPIC,
    NEED_TOPIC,
    Manifest,
    TransferReceiver,
    TransferSender,
)

__all__ = ["ACTIVATED_TOPIC", "MESSAGE_TOPIC", "Handler", "SyncEndpoint", "pump"]

log = logging.getLogger(__name__)

Handler = Callable[[Envelope, sqlite3.Connection], None]

MESSAGE_TOPIC = "message"  # an envelope whose payload is one encoded KubeEdge message
ACTIVATED_TOPIC = "transfer.activated"  # the receiver put a blob it was sent into use
Activated = Callable[[Manifest], None]


class SyncEndpoint:
    """``name`` is this end's source identity; its state lives under ``directory``."""

    def __init__(
        self,
        name: str,
        directory: Path | str,
        *,
        handlers: dict[str, Handler] | None = None,
        on_activated: Activated | None = None,
        quota_bytes: int | None = None,
        reserved_share: float = 0.10,
        resend_after: float | None = None,
        synchronous: str = "FULL",
    ) -> None:
        self.name = name
        self.directory = Path(directory)
        self.spool = Spool(
            self.directory / "spool.db",
            name,
            quota_bytes=quota_bytes,
            reserved_share=reserved_share,
            resend_after=resend_after,
            synchronous=synchronous,
        )
        self.receipts = Receipts(self.directory / "receipts.db", name, synchronous=synchronous)
        self.sender = TransferSender(self.spool)
        self.receiver = TransferReceiver(self.directory / "transfers", self.receipts.db)
        self._handlers: dict[str, Handler] = {
            MANIFEST_TOPIC: self.receiver.on_manifest,
            CHUNK_TOPIC: self.receiver.on_chunk,
            NEED_TOPIC: lambda env, db: None,  # handled after the receipt commits
            ACTIVATED_TOPIC: lambda env, db: None,
            **(handlers or {}),
        }
        self._on_activated = on_activated
        self.connected = False
        self.bad_envelopes = 0
        self.unhandled = 0
        # What the peer reports it activated of what this end sent: name -> version (since
        # this process started; the peer's report is spooled there until it gets here).
        self.peer_active: dict[str, str] = {}

    # -- the application's side ----------------------------------------------------------

    def send(
        self,
        topic: str,
        payload: bytes = b"",
        *,
        priority: Priority,
        now: float,
        key: str = "",
        rv: int = 0,
        ttl: float | None = None,
        size: int | None = None,
        meta: dict[str, object] | None = None,
    ) -> int | None:
        """Spool a message for the peer (committed before this returns)."""
        return self.spool.put(
            topic,
            payload,
            priority=priority,
            now=now,
            key=key,
            rv=rv,
            ttl=ttl,
            size=size,
            meta=meta,
        )

    def offer(self, manifest: Manifest, read_chunk: Callable[[int], bytes], *, now: float) -> None:
        self.sender.offer(manifest, read_chunk, now=now)

    # -- the transport's side ------------------------------------------------------------

    def link_up(self) -> None:
        """A new contact: the reserved share counts afresh, and anything still marked in
        flight from an earlier link (whose ACK can no longer be expected) is due again."""
        self.connected = True
        self.spool.resend_all()
        self.spool.window_reset()

    def link_down(self) -> None:
        """What was sent and not acknowledged goes again on the next contact."""
        self.connected = False
        self.spool.resend_all()

    def outgoing(self, budget: int, now: float) -> list[Envelope]:
        """Acknowledgements first, then the spool's choice within the rest of ``budget``."""
        acks = self.receipts.take_acks(now)
        used = sum(a.wire_size for a in acks)
        return acks + self.spool.take(max(0, budget - used), now)

    def incoming(self, envelope: Envelope, now: float) -> Verdict | None:
        """Apply one arrival; None for an ACK (or an envelope refused as malformed)."""
        if envelope.kind == ACK:
            if envelope.topic == self.name:
                try:
                    self.spool.acknowledge_ranges(ack_ranges(envelope))
                except EnvelopeError as exc:
                    self.bad_envelopes += 1
                    log.warning("%s: bad ACK from %s: %s", self.name, envelope.source, exc)
            return None
        handler = self._handlers.get(envelope.topic)
        if handler is None:
            # Acknowledged (it would only come again) but counted and logged, not dropped
            # as if applied.
            self.unhandled += 1
            log.warning(
                "%s: no handler for topic %r from %s",
                self.name,
                envelope.topic[:64],
                envelope.source,
            )
        verdict = self.receipts.receive(envelope, handler)
        if verdict is Verdict.APPLIED:
            if envelope.topic == CHUNK_TOPIC:
                self._maybe_activate(envelope, now)
            elif envelope.topic == ACTIVATED_TOPIC:
                self._peer_activated(envelope)
            elif envelope.topic == NEED_TOPIC:
                try:
                    self.sender.resend(envelope, now=now)
                except ValueError as exc:  # a peer's bad payload must not stop the link
                    self.bad_envelopes += 1
                    log.warning("%s: bad need from %s: %s", self.name, envelope.source, exc)
        return verdict

    def incoming_frame(self, frame: bytes, now: float) -> Verdict | None:
        try:
            envelope = Envelope.decode(frame)
        except EnvelopeError as exc:
            # Not acknowledged: a frame damaged in transit is sent again.
            self.bad_envelopes += 1
            log.warning("%s: dropped a bad envelope: %s", self.name, exc)
            return None
        return self.incoming(envelope, now)

    def _maybe_activate(self, envelope: Envelope, now: float) -> None:
        manifest = self.receiver.manifest(
            str(envelope.meta.get("name")), str(envelope.meta.get("version"))
        )
        if manifest is None or not self.receiver.complete(manifest):
            return
        if self.receiver.active(manifest.name)[0] == manifest.version:
            return
        bad = self.receiver.activate(manifest)
        if bad:
            log.warning(
                "%s: %s failed verification, asking again for %d chunks",
                self.name,
                manifest.key,
                len(bad),
            )
            self.send(
                NEED_TOPIC,
                self.receiver.need_message(manifest, bad),
                priority=Priority.CONTROL,
                now=now,
            )
        else:
            # The sender learns it: it knows its blob is in use, not merely delivered.
            self.send(
                ACTIVATED_TOPIC,
                orjson.dumps({"name": manifest.name, "version": manifest.version}),
                priority=Priority.CONTROL,
                now=now,
                key=f"activated/{manifest.name}",
            )
            if self._on_activated is not None:
                self._on_activated(manifest)

    def _peer_activated(self, envelope: Envelope) -> None:
        try:
            news = orjson.loads(envelope.payload)
            name, version = str(news["name"]), str(news["version"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            self.bad_envelopes += 1
            log.warning("%s: bad activation news from %s: %r", self.name, envelope.source, exc)
            return
        self.peer_active[name] = version

    def status(self) -> dict[str, object]:
        stats = self.spool.stats()
        return {
            "pending": stats.pending,
            "pendingBytes": stats.pending_bytes,
            "inFlight": stats.in_flight,
            "spool": stats.counters,
            "receipts": dict(self.receipts.counters),
        }

    def close(self) -> None:
        self.spool.close()
        self.receipts.close()


async def pump(
    endpoint: SyncEndpoint,
    send: Callable[[bytes], Awaitable[None]],
    wake: asyncio.Event,
    *,
    window: int,
    clock: Callable[[], float],
    resend_after: float | None,
) -> None:
    """Drive ``endpoint`` over a connected transport: send what is due with at most
    ``window`` bytes unacknowledged, then wait for ``wake`` (a new message, an ACK) or the
    resend timer. Returns when ``send`` raises ``ConnectionError`` (the link is gone)."""
    while True:
        wake.clear()
        budget = window - endpoint.spool.in_flight_bytes
        envelopes = endpoint.outgoing(budget, clock()) if budget > 0 else []
        for envelope in envelopes:
            try:
                await send(envelope.encode())
            except ConnectionError:
                endpoint.spool.resend_all()  # taken but never on the wire: due again
                return
        if envelopes:
            continue
        timeout = resend_after / 2 if resend_after and len(endpoint.spool) else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wake.wait()
