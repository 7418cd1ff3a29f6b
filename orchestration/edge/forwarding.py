"""Upstream from the edge: the durable outbox, and MetaServer writes forwarded to the cloud.

EdgeHub keeps nothing while the link is down, so pod statuses, node status and lease renewals
are written here first and sent when the link is up. One row per key (e.g.
``default/podstatus/web``): a newer report replaces an older one, because the cloud only needs
the latest state of each thing, and a node offline for a week must not replay a week of
statuses. Rows are flushed in the order of their last write, and a row stays until the cloud
answers it (``response``, or ``error`` when it refused it) by ``parent_msg_id``: a report sent
just before the cloud died is sent again, after a reconnect or when no answer came in time.

It is a tiny SQLite file of its own, written synchronously from the event loop: each write is
one small row, and callers (runtime status callbacks) must not await.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..protocol import (
    DELETE,
    ERROR,
    GROUP_RESOURCE,
    INSERT,
    PATCH,
    QUERY,
    UPDATE,
    Message,
    resource_path,
)
from .hub import EdgeHub, NotConnected
from .metaserver import PLURAL_TO_TYPE

__all__ = ["CloudForwarder", "Outbox", "Pending", "http_answer", "request_resource"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    message BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (seq);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    key: str
    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class _Sent:
    seq: int
    msg_id: str
    deadline: float  # event-loop time after which it is sent again


class Outbox:
    """Coalescing, ordered, durable queue of upstream messages, keyed by what they report on."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a status written just before a power cut is still there after it.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        # In memory: what was sent and awaits its answer, per key (a reconnect forgets it all).
        self._sent: dict[str, _Sent] = {}
        self._sent_ids: dict[str, str] = {}  # msg_id -> key, for the answers
        row = self._db.execute("SELECT MIN(seq), MAX(seq) FROM outbox").fetchone()
        # The ends of the queue; they only move outwards, so a sequence is never reused.
        self._low, self._high = (row[0] or 0), (row[1] or 0)

    def _next_seq(self, first: bool) -> int:
        if first:
            self._low -= 1
            return self._low
        self._high += 1
        return self._high

    def put(self, key: str, message: Message, *, first: bool = False) -> int:
        """Keep ``message`` as the one to send for ``key`` (replacing any older one); its
        place is at the end of the queue, or at its head with ``first`` (e.g. the node's
        registration, which later node status patches depend on). Returns its sequence."""
        with self._db:
            seq = self._next_seq(first)
            self._db.execute(
                "INSERT INTO outbox (key, seq, message) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET seq = excluded.seq, message = excluded.message",
                (key, seq, message.encode()),
            )
        return seq

    def pending(self) -> list[Pending]:
        rows = self._db.execute("SELECT key, seq, message FROM outbox ORDER BY seq").fetchall()
        return [Pending(k, s, Message.decode(m)) for k, s, m in rows]

    def get(self, key: str) -> Message | None:
        row = self._db.execute("SELECT message FROM outbox WHERE key = ?", (key,)).fetchone()
        return None if row is None else Message.decode(row[0])

    def remove(self, key: str, seq: int) -> bool:
        """Drop ``key`` once answered, unless a newer report replaced it meanwhile."""
        with self._db:
            cur = self._db.execute("DELETE FROM outbox WHERE key = ? AND seq = ?", (key, seq))
        if cur.rowcount == 0:
            return False
        self._forget(key)  # nothing left to await (or resend) for it
        return True

    def due(self, now: float) -> list[Pending]:
        """The rows to send, oldest first: those not sent, or not answered by their deadline
        (a newer report for a key is a new row, whatever its predecessor awaits). Only these
        are decoded: rows on their way cost a comparison, not a parse."""
        rows = self._db.execute("SELECT key, seq, message FROM outbox ORDER BY seq")
        return [Pending(k, s, Message.decode(m)) for k, s, m in rows if not self._awaits(k, s, now)]

    def _awaits(self, key: str, seq: int, now: float) -> bool:
        sent = self._sent.get(key)
        return sent is not None and sent.seq == seq and sent.deadline > now

    def sent(self, item: Pending, deadline: float) -> None:
        """``item`` went out: not due again before ``deadline``, unless it is answered."""
        self._forget(item.key)
        self._sent[item.key] = _Sent(item.seq, item.message.msg_id, deadline)
        self._sent_ids[item.message.msg_id] = item.key

    def _forget(self, key: str) -> None:
        sent = self._sent.pop(key, None)
        if sent is not None:
            self._sent_ids.pop(sent.msg_id, None)

    def next_deadline(self) -> float | None:
        return min((s.deadline for s in self._sent.values()), default=None)

    def forget_sent(self) -> None:
        """The link was lost: every pending row is due again."""
        self._sent.clear()
        self._sent_ids.clear()

    def acknowledge(self, parent_msg_id: str) -> str | None:
        """The key whose sent message the cloud's reply answers (its row dropped, unless a
        newer report replaced it meanwhile); None if it answers nothing sent from here."""
        key = self._sent_ids.get(parent_msg_id)
        if key is None:
            return None
        sent = self._sent[key]
        self._forget(key)
        self.remove(key, sent.seq)
        return key

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CloudForwarder:
    """MetaServer's ``forward``: one write sent upstream, answered by the cloud's reply with
    ``parent_msg_id`` = the request's ``msg_id`` (the shape is in ``core``'s docstring)."""

    def __init__(self, hub: EdgeHub, *, timeout: float = 30.0) -> None:
        self._hub = hub
        self._timeout = timeout
        self._pending: dict[str, asyncio.Future[Message]] = {}

    async def __call__(
        self, method: str, path: str, query: str, body: bytes, *, content_type: str
    ) -> tuple[int, bytes]:
        content = {
            "method": method,
            "path": path,
            "query": query,
            "contentType": content_type,
            "body": body.decode(errors="replace"),
        }
        operation = _OPERATIONS.get(method, QUERY)
        request = Message(
            FORWARD_SOURCE, GROUP_RESOURCE, operation, request_resource(path), content
        )
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request.msg_id] = future
        try:
            await self._hub.send(request)  # NotConnected is a ConnectionError: MetaServer's 503
            async with asyncio.timeout(self._timeout):
                reply = await future
        finally:
            self._pending.pop(request.msg_id, None)
        return http_answer(reply)

    def resolve(self, message: Message) -> bool:
        """Hand a downstream reply to the write waiting for it; False if none is."""
        future = self._pending.get(message.parent_msg_id) if message.parent_msg_id else None
        if future is None:
            return False
        if not future.done():
            future.set_result(message)
        return True

    def fail_all(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotConnected("the edge is stopping"))


FORWARD_SOURCE = "metaserver"
_OPERATIONS = {"POST": INSERT, "PUT": UPDATE, "PATCH": PATCH, "DELETE": DELETE}
_ERROR_CODES = (
    ("not found", 404, "NotFound"),
    ("forbidden", 403, "Forbidden"),
    ("bad request", 400, "BadRequest"),
    ("conflict", 409, "Conflict"),
)


def request_resource(path: str) -> str:
    """``<ns>/<type>/<name>`` of an API path, as far as it names them (``null/unknown`` for
    what is not an API object path)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return "null/unknown"
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return "null/unknown"
    kind = PLURAL_TO_TYPE.get(rest[0], rest[0])
    return resource_path(namespace, kind, rest[1] if len(rest) > 1 else "")


def http_answer(reply: Message) -> tuple[int, bytes]:
    content = reply.content
    if reply.operation == ERROR:
        reason = str(content)
        code, status_reason = next(
            ((c, r) for prefix, c, r in _ERROR_CODES if reason.lower().startswith(prefix)),
            (500, "InternalError"),
        )
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": reason,
            "reason": status_reason,
            "code": code,
        }
        return code, orjson.dumps(status)
    if isinstance(content, dict) and isinstance(content.get("code"), int) and "body" in content:
        return int(content["code"]), orjson.dumps(content["body"])
    return 200, orjson.dumps(content)
