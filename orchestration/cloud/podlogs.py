"""CloudStream for ``kubectl logs``: pod log reads relayed to the pod's edge node over CloudHub.

Instead of KubeEdge's separate tunnel (kubeedge.md §8) the request rides the node's existing
WebSocket as ordinary messages:

* down: ``query <ns>/podlog/<pod>`` (source ``cloudstream``, group ``resource``), content
  ``{"uid", "container", "follow", "previous", "tailLines", "limitBytes"}`` (the last two
  ``null`` when not given);
* up: ``response`` messages with ``parent_msg_id`` = the query's ``msg_id`` and content
  ``{"data": <base64 chunk>, "done": bool}``, the first one sent as soon as the node has
  accepted the request (its data may be empty); or one ``error`` whose content is the reason;
* down, when the reader goes away first: ``delete <ns>/podlog/<pod>`` with ``parent_msg_id``
  = the query's ``msg_id``; the node stops following.

CloudHub reads one node's frames in order and must never wait on a slow HTTP reader, so each
stream buffers at most ``max_buffer`` bytes: past that, chunks are dropped and the reader gets
a marker saying how many bytes were lost (drop-with-marker, not back-pressure).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from ..apiserver import APIError
from ..apiserver.podlogs import LogOptions
from ..protocol import DELETE, ERROR, GROUP_RESOURCE, QUERY, RESPONSE, Message, parse_resource
from .hub import CloudHub
from .sessions import NodeNotConnected

log = logging.getLogger(__name__)

SOURCE = "cloudstream"
KIND = "podlog"
_CHUNK_OVERHEAD = 64  # what one queued chunk costs beyond its bytes, counted against the cap
_GAP = b"\n[orbiter: %d bytes of log dropped here: the reader fell behind]\n"


class _Dropped:
    """A gap in a stream: ``count`` bytes the reader was too slow for."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class _Stream:
    __slots__ = ("buffered", "dropped", "ended", "items", "node", "wake")

    def __init__(self, node: str) -> None:
        self.node = node
        self.items: deque[bytes | _Dropped | str | None] = deque()  # str: error; None: end
        self.buffered = 0
        self.ended = False  # the node has finished (done, error, or gone)
        self.wake = asyncio.Event()

    def push(self, item: bytes | str | None, max_buffer: int) -> None:
        if self.ended:
            return
        if isinstance(item, bytes):
            # Each queued chunk costs its object too: a node answering in 1-byte chunks must
            # not queue millions of them under the byte cap.
            cost = len(item) + _CHUNK_OVERHEAD
            if self.buffered + cost > max_buffer:
                gap = self.items[-1] if self.items else None
                if not isinstance(gap, _Dropped):
                    gap = _Dropped()
                    self.items.append(gap)
                gap.count += len(item)
            elif item or not self.items:  # an empty chunk only matters as the first reply
                self.items.append(item)
                self.buffered += cost
        else:
            self.ended = True
            self.items.append(item)
        self.wake.set()

    async def get(self) -> bytes | _Dropped | str | None:
        while not self.items:
            self.wake.clear()
            await self.wake.wait()
        item = self.items.popleft()
        if isinstance(item, bytes):
            self.buffered -= len(item) + _CHUNK_OVERHEAD
        return item


class PodLogStreams:
    """``API.pod_logs`` for pods on edge nodes: ``open`` is the log source, ``handle`` takes
    the nodes' replies out of CloudHub's upstream, ``node_gone`` ends a lost node's streams."""

    def __init__(
        self,
        hub: CloudHub,
        *,
        max_buffer: int = 4 * 1024 * 1024,
        max_per_node: int = 16,
        first_reply_timeout: float = 30.0,
    ) -> None:
        self._hub = hub
        self._max_buffer = max_buffer
        self._max_per_node = max_per_node
        self._first_timeout = first_reply_timeout
        self._streams: dict[str, _Stream] = {}  # by the query's msg_id

    def streams(self, node: str) -> int:
        """How many log streams to ``node`` are open."""
        return sum(1 for s in self._streams.values() if s.node == node)

    async def open(self, pod: dict[str, Any], opts: LogOptions) -> AsyncGenerator[bytes, None]:
        meta = pod.get("metadata") or {}
        name, ns = str(meta.get("name", "")), str(meta.get("namespace") or "default")
        node = str((pod.get("spec") or {}).get("nodeName", ""))
        if not self._hub.is_connected(node):
            raise _not_connected(node)
        if self.streams(node) >= self._max_per_node:
            raise APIError(
                429, f"too many log streams to node {node} (at most {self._max_per_node})"
            )
        resource = f"{ns}/{KIND}/{name}"
        content = {
            "uid": meta.get("uid", ""),
            "container": opts.container,
            "follow": opts.follow,
            "previous": opts.previous,
            "tailLines": opts.tail_lines,
            "limitBytes": opts.limit_bytes,
        }
        request = Message(SOURCE, GROUP_RESOURCE, QUERY, resource, content)
        stream = self._streams[request.msg_id] = _Stream(node)
        try:
            try:
                await self._hub.send(node, request)
                async with asyncio.timeout(self._first_timeout):
                    item = await stream.get()
            except NodeNotConnected:
                raise _not_connected(node) from None
            except TimeoutError:
                raise APIError(
                    504, f"node {node} did not answer the log request for pod {name}"
                ) from None
            if isinstance(item, str):
                raise APIError(400, item)
            while True:
                if isinstance(item, bytes):
                    yield item
                elif isinstance(item, _Dropped):
                    yield _GAP % item.count
                else:
                    if item is not None:  # an error after the stream began: just end it
                        log.info("log stream of pod %s/%s ended: %s", ns, name, item)
                    return
                item = await stream.get()
        finally:
            del self._streams[request.msg_id]
            if not stream.ended:  # the reader left first: stop the node following
                stop = Message(SOURCE, GROUP_RESOURCE, DELETE, resource, None)
                stop.parent_msg_id = request.msg_id
                with contextlib.suppress(NodeNotConnected):
                    await self._hub.send(node, stop)

    def handle(self, node: str, message: Message) -> bool:
        """Take a node's log reply (True); False for every other message."""
        if message.operation not in (RESPONSE, ERROR):
            return False
        try:
            _, kind, _ = parse_resource(message.resource)
        except ValueError:
            return False
        if kind != KIND:
            return False
        stream = self._streams.get(message.parent_msg_id)
        if stream is None or stream.node != node:
            return True  # for a stream already closed (or not this node's): dropped
        if message.operation == ERROR:
            stream.push(str(message.content or "the node could not read the log"), 0)
            return True
        content = message.content if isinstance(message.content, dict) else {}
        try:
            data = base64.b64decode(str(content.get("data") or ""), validate=True)
        except (binascii.Error, ValueError):
            stream.push(f"node {node} sent a malformed log chunk", 0)
            return True
        stream.push(data, self._max_buffer)
        if content.get("done"):
            stream.push(None, 0)
        return True

    def node_gone(self, node: str) -> None:
        for stream in self._streams.values():
            if stream.node == node:
                stream.push(f"node {node} is not connected", 0)

    def close_all(self) -> None:
        """End every stream (the cloud is stopping)."""
        for stream in self._streams.values():
            stream.push("the cloud is stopping", 0)


def _not_connected(node: str) -> APIError:
    return APIError(400, f"node {node} is not connected to the cloud: cannot reach its pods")
