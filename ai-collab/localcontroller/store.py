"""The local controller's state: the latest report of each worker, in a small SQLite file.

One row per (ownerKind, namespace, ownerName, worker), replaced by each new report, so a node
restart keeps what its workers last said (Sedna's LC keeps its state in SQLite too). Written
synchronously from the event loop, like EdgeCore's outbox: each write is one small row.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ReportStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    owner_kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    worker TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (owner_kind, namespace, owner_name, worker)
);
"""


class ReportStore:
    """The latest report body (the worker's JSON object) per worker and owner."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def put(
        self, owner_kind: str, namespace: str, owner_name: str, worker: str, body: dict[str, Any]
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO reports VALUES (?, ?, ?, ?, ?)",
            (owner_kind, namespace, owner_name, worker, orjson.dumps(body)),
        )

    def get(
        self, owner_kind: str, namespace: str, owner_name: str, worker: str
    ) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT body FROM reports WHERE owner_kind = ? AND namespace = ? AND owner_name = ?"
            " AND worker = ?",
            (owner_kind, namespace, owner_name, worker),
        ).fetchone()
        return None if row is None else _object(row[0])

    def owner(self, owner_kind: str, namespace: str, owner_name: str) -> dict[str, dict[str, Any]]:
        """Every stored report of one owner, by worker name."""
        rows = self._db.execute(
            "SELECT worker, body FROM reports WHERE owner_kind = ? AND namespace = ?"
            " AND owner_name = ? ORDER BY worker",
            (owner_kind, namespace, owner_name),
        )
        return {worker: _object(body) for worker, body in rows}

    def close(self) -> None:
        self._db.close()


def _object(raw: bytes) -> dict[str, Any]:
    value = orjson.loads(raw)
    return value if isinstance(value, dict) else {}
