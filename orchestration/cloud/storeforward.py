"""Store-and-forward for every node, cloud side: one ``SyncEndpoint`` per node.

Upstream, a node's reports (statuses, leases, twin and extension reports) arrive as
envelopes in binary frames. Each is applied once, through the same upstream dispatch as a
text message, and acknowledged by ``(node, seq)``; a repeat, after a lost ACK or a restart
on either side, is acknowledged again and not applied (``Receipts.seen``). The application
writes to the API store, so its receipt is committed right after it: a crash between the two
applies that one report again, which the reports' newest-wins semantics make harmless.

Downstream, the cloud's spool per node carries what is not already durable in the API store
(whose objects go through ``EdgeController``'s ObjectSync-backed queue): blobs such as models,
cut into chunks and resumed across contacts, and control messages. It drains in priority
order within a byte window whenever the node is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..protocol import Message, MessageError
from ..protocol.envelopes import ACK, Envelope, EnvelopeError, Priority
from ..protocol.syncing import MESSAGE_TOPIC, SyncEndpoint, pump
from ..protocol.transfers import Manifest
from .hub import CloudHub
from .sessions import ENVELOPED

__all__ = ["NodeSync"]

log = logging.getLogger(__name__)


Dispatch = Callable[[str, Message], Awaitable[None]]
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class NodeSync:
    """Per-node store-and-forward endpoints under ``directory/<node>``."""

    def __init__(
        self,
        hub: CloudHub,
        directory: Path | str,
        dispatch: Dispatch,
        *,
        window: int = 4 * 1024 * 1024,
        resend_after: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        self.directory = Path(directory)
        self._dispatch = dispatch
        self._window = window
        self._resend_after = resend_after
        self._clock = clock
        self._endpoints: dict[str, SyncEndpoint] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self.on_activated: Callable[[str, Manifest], None] | None = None
        hub.frames = self.frame
        hub.on_connect(self._connected)
        hub.on_disconnect(self._disconnected)

    def endpoint(self, node: str) -> SyncEndpoint:
        ep = self._endpoints.get(node)
        if ep is None:
            if not _NODE.match(node):
                raise ValueError(f"node name {node!r} is not a DNS subdomain")
            ep = self._endpoints[node] = SyncEndpoint(
                f"cloud/{node}",
                self.directory / node,
                resend_after=self._resend_after,
                on_activated=functools.partial(self._activated, node),
                # WAL's NORMAL survives a crash of the cloud process; what a power cut could
                # lose is a receipt (the report is applied again, newest-wins) or a chunk
                # (sent again): not worth an fsync per report from every node.
                synchronous="NORMAL",
            )
        return ep

    def _activated(self, node: str, manifest: Manifest) -> None:
        if self.on_activated is not None:
            self.on_activated(node, manifest)

    # -- what the cloud sends --------------------------------------------------------------

    def send(
        self,
        node: str,
        topic: str,
        payload: bytes,
        *,
        priority: Priority,
        key: str = "",
        ttl: float | None = None,
    ) -> int | None:
        seq = self.endpoint(node).send(
            topic, payload, priority=priority, now=self._clock(), key=key, ttl=ttl
        )
        self._wake(node)
        return seq

    def offer(self, node: str, manifest: Manifest, read_chunk: Callable[[int], bytes]) -> None:
        """Send a blob to ``node``, resumably: chunks it has acknowledged are never sent again."""
        self.endpoint(node).offer(manifest, read_chunk, now=self._clock())
        self._wake(node)

    def activated(self, node: str, name: str) -> str | None:
        """The version of blob ``name`` that ``node`` reported it put into use (since this
        cloud started), None if none."""
        return self.endpoint(node).peer_active.get(name)

    # -- the link --------------------------------------------------------------------------

    async def frame(self, node: str, data: bytes) -> None:
        ep = self.endpoint(node)
        try:
            envelope = Envelope.decode(data)
        except EnvelopeError as exc:
            ep.bad_envelopes += 1
            log.warning("node %s: dropped a bad envelope: %s", node, exc)
            return
        if envelope.kind != ACK and envelope.source != node:
            ep.bad_envelopes += 1
            log.warning("node %s sent an envelope as %r; dropped", node, envelope.source)
            return
        if envelope.kind == ACK or envelope.topic != MESSAGE_TOPIC:
            ep.incoming(envelope, self._clock())
        elif ep.receipts.seen(envelope):
            ep.receipts.receive(envelope)  # a repeat: acknowledged again
        else:
            await self._apply(node, envelope)
            ep.receipts.receive(envelope)
        self._wake(node)

    async def _apply(self, node: str, envelope: Envelope) -> None:
        try:
            message = Message.decode(envelope.payload)
        except MessageError as exc:
            log.warning("node %s: envelope %d holds no valid message: %s", node, envelope.seq, exc)
            return  # recorded and acknowledged: the same bytes would fail again
        token = ENVELOPED.set(True)
        try:
            await self._dispatch(node, message)
        except Exception:
            log.exception("node %s: applying %s failed", node, message.resource)
        finally:
            ENVELOPED.reset(token)

    def _wake(self, node: str) -> None:
        wake = self._wakes.get(node)
        if wake is not None:
            wake.set()

    def _connected(self, node: str) -> None:
        self.endpoint(node).link_up()
        self._wakes[node] = asyncio.Event()
        self._pumps[node] = asyncio.create_task(self._pump(node), name=f"nodesync-{node}")

    async def _disconnected(self, node: str) -> None:
        pump = self._pumps.pop(node, None)
        self._wakes.pop(node, None)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        ep = self._endpoints.get(node)
        if ep is not None:
            ep.link_down()

    async def _pump(self, node: str) -> None:
        await pump(
            self.endpoint(node),
            lambda frame: self.hub.send(node, frame),
            self._wakes[node],
            window=self._window,
            clock=self._clock,
            resend_after=self._resend_after,
        )

    async def close(self) -> None:
        for node in list(self._pumps):
            await self._disconnected(node)
        for ep in self._endpoints.values():
            ep.close()
        self._endpoints.clear()
