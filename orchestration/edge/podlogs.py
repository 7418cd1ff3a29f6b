"""EdgeStream for ``kubectl logs``: serves the cloud's ``podlog`` queries from the runtime.

Message shapes are in ``cloud/podlogs.py`` (the cloud's side of the same exchange): a
``query <ns>/podlog/<pod>`` starts a stream, answered by ``response`` messages
``{"data": <base64>, "done": bool}`` (the first one as soon as the request is accepted) or
by one ``error``; ``delete <ns>/podlog/<pod>`` with the query's id as ``parent_msg_id``
stops it. Every stream is a task of its own: the hub's read loop must not wait on a follow.
Streams end when the link drops (the cloud has forgotten them by then).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..protocol import DELETE, QUERY, Message, parse_resource
from .hub import NotConnected
from .runtime import ProcessRuntime

log = logging.getLogger(__name__)

KIND = "podlog"
SOURCE = "edgestream"
CHUNK = 64 * 1024  # per message: base64 makes it ~87 KiB, far under the frame cap
MAX_STREAMS = 32  # the cloud caps per node too; this guards against a confused cloud


class PodLogServer:
    def __init__(self, runtime: ProcessRuntime, send: Callable[[Message], Awaitable[None]]) -> None:
        self._runtime = runtime
        self._send = send
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by the query's msg_id

    def handle(self, message: Message) -> bool:
        """Take a ``podlog`` message (True); False for every other message."""
        try:
            namespace, kind, name = parse_resource(message.resource)
        except ValueError:
            return False
        if kind != KIND:
            return False
        if message.operation == DELETE:
            task = self._tasks.get(message.parent_msg_id)
            if task is not None:
                task.cancel()
        elif message.operation == QUERY and message.msg_id not in self._tasks:
            task = asyncio.create_task(
                self._serve(message, namespace or "default", name), name=f"podlog-{name}"
            )
            self._tasks[message.msg_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(message.msg_id, None))
        return True

    @property
    def active(self) -> int:
        """How many log streams this node is serving."""
        return len(self._tasks)

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self.cancel_all()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, request: Message, namespace: str, name: str) -> None:
        content: dict[str, Any] = request.content if isinstance(request.content, dict) else {}
        try:
            if len(self._tasks) > MAX_STREAMS:
                raise KeyError(f"too many log streams on this node (at most {MAX_STREAMS})")
            uid = self._find(content, namespace, name)
            await self._stream(request, uid, content)
        except KeyError as exc:
            reason = str(exc.args[0]) if exc.args else str(exc)
            with contextlib.suppress(NotConnected):
                await self._send(request.error(reason, source=SOURCE))
        except NotConnected:
            pass  # the link dropped: the cloud has ended the stream already
        except Exception:
            log.exception("log stream for pod %s/%s failed", namespace, name)
            with contextlib.suppress(NotConnected):
                await self._send(request.error("internal error reading the log", source=SOURCE))

    def _find(self, content: dict[str, Any], namespace: str, name: str) -> str:
        """The uid of the pod the request names, checked against its name (KeyError)."""
        pods = self._runtime.running_pods()
        uid = str(content.get("uid") or "")
        for pod_uid, pod in pods.items():
            meta = pod.get("metadata") or {}
            same = meta.get("name") == name and (meta.get("namespace") or "default") == namespace
            if same and (not uid or pod_uid == uid):
                return pod_uid
        raise KeyError(f'pod "{name}" in namespace "{namespace}" is not running on this node')

    async def _stream(self, request: Message, uid: str, content: dict[str, Any]) -> None:
        container = str(content.get("container") or "")
        previous = bool(content.get("previous"))
        tail = _opt_int(content.get("tailLines"))
        budget = _opt_int(content.get("limitBytes"))
        snapshot = self._runtime.logs(uid, container, previous=previous)  # KeyError: refused
        head = _tail(snapshot, tail) if tail is not None else snapshot
        if budget is not None:
            head = head[:budget]
            budget -= len(head)
        if not content.get("follow") or budget == 0:
            await self._chunks(request, head, done=True)
            return
        await self._chunks(request, head, done=False)  # also says "accepted" when empty
        skip = len(snapshot)  # the follow re-reads the file from its start
        chunks: AsyncIterator[bytes] = self._runtime.logs(uid, container, True, previous)
        try:
            async for chunk in chunks:
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if budget is not None:
                    chunk = chunk[:budget]
                    budget -= len(chunk)
                if chunk:
                    await self._chunks(request, chunk, done=False)
                if budget == 0:
                    break
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._chunks(request, b"", done=True)

    async def _chunks(self, request: Message, data: bytes, *, done: bool) -> None:
        for start in range(0, max(len(data), 1), CHUNK):
            last = start + CHUNK >= len(data)
            piece = base64.b64encode(data[start : start + CHUNK]).decode()
            reply = request.response({"data": piece, "done": done and last}, source=SOURCE)
            await self._send(reply)


def _tail(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines (a final line without a newline counts as one)."""
    if lines == 0:
        return b""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    cut = end
    for _ in range(lines):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return data
    return data[cut + 1 :]


def _opt_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
