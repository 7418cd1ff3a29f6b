"""Resumable blob transfers over the spool: models down to a node, data batches up.

A blob is cut into fixed-size chunks listed with their sha256 in a manifest (CFDP's idea,
satellite.md §5.3 item 6). The sender spools the manifest and every chunk; an acknowledged
chunk leaves the spool, so the next contact sends only what is still missing. The receiver
keeps a persisted bitmap of verified chunks: a chunk whose digest does not match is refused
(not acknowledged, so it is sent again), and a blob is activated only once the whole
manifest verifies, with an atomic rename; the previous version stays for ``rollback``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .envelopes import Envelope, Priority
from .receipts import Rejected
from .spooling import Spool
from .transactions import transaction

__all__ = [
    "CHUNK_SIZE",
    "Manifest",
    "TransferReceiver",
    "TransferSender",
    "build_manifest",
]

CHUNK_SIZE = 256 * 1024
CURRENT = "current"  # blobs/<name>/current: a symlink to the active version
MAX_CHUNK_SIZE = 8 * 1024 * 1024
MAX_CHUNKS = 1 << 20
MAX_BLOB = 4 * 1024**3  # a receiver's default cap on one blob
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # never "." or "..": no path tricks
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
MANIFEST_TOPIC, CHUNK_TOPIC, NEED_TOPIC = "transfer.manifest", "transfer.chunk", "transfer.need"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    name TEXT NOT NULL, version TEXT NOT NULL, manifest BLOB NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    name TEXT NOT NULL, version TEXT NOT NULL, idx INTEGER NOT NULL,
    PRIMARY KEY (name, version, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS active (
    name TEXT PRIMARY KEY, current TEXT NOT NULL, previous TEXT
);
"""


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    version: str
    size: int
    chunk_size: int
    sha256: str
    chunks: tuple[str, ...]

    def __post_init__(self) -> None:
        for field, value in (("name", self.name), ("version", self.version)):
            if not _NAME.match(value):
                raise ValueError(f"manifest {field} {value!r} must match {_NAME.pattern}")
        if self.version == CURRENT:
            raise ValueError(
                f"manifest version {CURRENT!r} is reserved (the active version's link)"
            )
        if self.size < 0:
            raise ValueError(f"manifest size must be a non-negative integer, not {self.size}")
        if not _DIGEST.match(self.sha256):
            raise ValueError(f"manifest sha256 {self.sha256!r} is not a hex sha256 digest")
        if not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"manifest chunk_size must be in (0, {MAX_CHUNK_SIZE}]")
        if len(self.chunks) > MAX_CHUNKS:
            raise ValueError(f"manifest lists {len(self.chunks)} chunks, over {MAX_CHUNKS}")
        for i, digest in enumerate(self.chunks):
            if not _DIGEST.match(digest):
                raise ValueError(f"manifest chunks[{i}] {digest!r} is not a hex sha256 digest")
        expected = -(-self.size // self.chunk_size) if self.size else 0
        if len(self.chunks) != expected:
            raise ValueError(
                f"manifest of {self.size} bytes in {self.chunk_size}-byte chunks needs "
                f"{expected} chunk digests, not {len(self.chunks)}"
            )

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "chunkSize": self.chunk_size,
            "sha256": self.sha256,
            "chunks": list(self.chunks),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ValueError("a manifest must be an object")
        missing = [
            k for k in ("name", "version", "size", "chunkSize", "sha256", "chunks") if k not in data
        ]
        if missing:
            raise ValueError(f"manifest is missing {missing[0]!r}")
        for k, t in (("size", int), ("chunkSize", int), ("chunks", list)):
            # A wrong type must fail naming its field, not with int()'s or iter()'s message.
            if not isinstance(data[k], t) or isinstance(data[k], bool):
                raise ValueError(f"manifest {k} must be {'a list' if t is list else 'an integer'}")
        return cls(
            str(data["name"]),
            str(data["version"]),
            data["size"],
            data["chunkSize"],
            str(data["sha256"]),
            tuple(str(c) for c in data["chunks"]),
        )


def build_manifest(name: str, version: str, data: bytes, chunk_size: int = CHUNK_SIZE) -> Manifest:
    chunks = tuple(
        hashlib.sha256(data[i : i + chunk_size]).hexdigest()
        for i in range(0, len(data), chunk_size)
    )
    return Manifest(name, version, len(data), chunk_size, hashlib.sha256(data).hexdigest(), chunks)


class TransferSender:
    """Spools blobs for the peer. ``read_chunk`` callbacks stay in memory: after a restart
    the caller offers the blob again (the spool's keys make that idempotent)."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._sources: dict[str, tuple[Manifest, Callable[[int], bytes]]] = {}

    def attach(self, manifest: Manifest, read_chunk: Callable[[int], bytes]) -> None:
        """After a restart: where a blob offered earlier (still spooled) reads its chunks, so
        that a receiver's request for chunks found bad can be served. Spools nothing."""
        self._sources[manifest.key] = (manifest, read_chunk)

    def offer(
        self,
        manifest: Manifest,
        read_chunk: Callable[[int], bytes],
        *,
        now: float,
        ttl: float | None = None,
        priority: Priority = Priority.CHUNK,
    ) -> None:
        self._sources[manifest.key] = (manifest, read_chunk)
        self._spool.put(
            MANIFEST_TOPIC,
            orjson.dumps(manifest.to_dict()),
            priority=Priority.CONTROL,
            now=now,
            key=f"manifest/{manifest.key}",
            ttl=ttl,
        )
        for index in range(len(manifest.chunks)):
            self._put_chunk(manifest, read_chunk, index, now, ttl, priority)

    def _put_chunk(
        self,
        manifest: Manifest,
        read_chunk: Callable[[int], bytes],
        index: int,
        now: float,
        ttl: float | None,
        priority: Priority,
        rv: int = 0,
    ) -> None:
        self._spool.put(
            CHUNK_TOPIC,
            read_chunk(index),
            priority=priority,
            now=now,
            key=f"chunk/{manifest.key}/{index}",
            rv=rv,
            ttl=ttl,
            meta={"name": manifest.name, "version": manifest.version, "index": index},
        )

    def resend(self, envelope: Envelope, *, now: float) -> int:
        """Handle the receiver's ``need`` message: spool the named chunks again (ValueError if
        the message is malformed)."""
        need = orjson.loads(envelope.payload)
        if not isinstance(need, dict) or not isinstance(need.get("chunks", []), list):
            raise ValueError("a need message must be an object with a list of chunks")
        source = self._sources.get(f"{need.get('name')}/{need.get('version')}")
        if source is None:
            return 0
        manifest, read_chunk = source
        indices = [i for i in need.get("chunks", []) if isinstance(i, int)]
        for index in indices:
            if 0 <= index < len(manifest.chunks):
                # The receiver already holds this chunk's key at some rv: the copy must be
                # newer or it is dropped there as stale. The need's seq only grows.
                self._put_chunk(
                    manifest, read_chunk, index, now, None, Priority.CHUNK, rv=envelope.seq
                )
        return len(indices)


class TransferReceiver:
    """Reassembles blobs under ``directory``; its tables live in ``db`` (the receipts'
    database, so a chunk's bitmap bit commits with its receipt)."""

    def __init__(
        self, directory: Path | str, db: sqlite3.Connection, *, max_blob_bytes: int = MAX_BLOB
    ) -> None:
        self.directory = Path(directory)
        self.max_blob_bytes = max_blob_bytes  # the peer decides what it sends; not our disk
        (self.directory / "partial").mkdir(parents=True, exist_ok=True)
        (self.directory / "blobs").mkdir(parents=True, exist_ok=True)
        self._db = db
        db.executescript(_SCHEMA)
        self.refused = 0

    # -- receiving -----------------------------------------------------------------------

    def on_manifest(self, envelope: Envelope, db: sqlite3.Connection) -> None:
        try:
            manifest = Manifest.from_dict(orjson.loads(envelope.payload))
        except (ValueError, orjson.JSONDecodeError) as exc:
            # Not retryable: the same bytes would come again. Accept and ignore, loudly.
            self.refused += 1
            raise ValueError(f"bad manifest from {envelope.source}: {exc}") from None
        if manifest.size > self.max_blob_bytes:
            self.refused += 1
            raise ValueError(
                f"{envelope.source} offers {manifest.key} of {manifest.size} bytes, over the "
                f"{self.max_blob_bytes}-byte cap"
            )
        db.execute(
            "INSERT INTO transfers VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (manifest.name, manifest.version, orjson.dumps(manifest.to_dict())),
        )

    def on_chunk(self, envelope: Envelope, db: sqlite3.Connection) -> None:
        meta = envelope.meta
        name, version, index = meta.get("name"), meta.get("version"), meta.get("index")
        manifest = self.manifest(str(name), str(version))
        if manifest is None or not isinstance(index, int) or not 0 <= index < len(manifest.chunks):
            raise Rejected(f"chunk {name}/{version}#{index} has no manifest here yet")
        if hashlib.sha256(envelope.payload).hexdigest() != manifest.chunks[index]:
            self.refused += 1
            raise Rejected(f"chunk {manifest.key}#{index} does not match its digest")
        path = self._partial(manifest) / str(index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(envelope.payload)
        db.execute(
            "INSERT INTO chunks VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (manifest.name, manifest.version, index),
        )

    # -- state ---------------------------------------------------------------------------

    def manifest(self, name: str, version: str) -> Manifest | None:
        row = self._db.execute(
            "SELECT manifest FROM transfers WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
        return None if row is None else Manifest.from_dict(orjson.loads(row[0]))

    def have(self, manifest: Manifest) -> set[int]:
        """The persisted bitmap: chunks verified and stored."""
        return {
            r[0]
            for r in self._db.execute(
                "SELECT idx FROM chunks WHERE name = ? AND version = ?",
                (manifest.name, manifest.version),
            )
        }

    def missing(self, manifest: Manifest) -> list[int]:
        have = self.have(manifest)
        return [i for i in range(len(manifest.chunks)) if i not in have]

    def complete(self, manifest: Manifest) -> bool:
        return not self.missing(manifest)

    def _partial(self, manifest: Manifest) -> Path:
        return self.directory / "partial" / manifest.name / manifest.version

    def blob_path(self, name: str, version: str) -> Path:
        return self.directory / "blobs" / name / version

    # -- activation ----------------------------------------------------------------------

    def activate(self, manifest: Manifest) -> list[int]:
        """Assemble, verify the whole blob and make it the active version (the old one is
        kept as ``previous``). Returns [] on success, else the chunks found bad on disk,
        which are cleared from the bitmap so that they are asked for again."""
        if self.active(manifest.name)[0] == manifest.version:
            return []  # done already (its chunks are gone with the partial directory)
        if not self.complete(manifest):
            return self.missing(manifest)
        partial = self._partial(manifest)
        whole = hashlib.sha256()
        bad = []
        for index, digest in enumerate(manifest.chunks):
            data = (partial / str(index)).read_bytes() if (partial / str(index)).exists() else b""
            if hashlib.sha256(data).hexdigest() != digest:
                bad.append(index)
            whole.update(data)
        if bad or whole.hexdigest() != manifest.sha256:
            with transaction(self._db):
                self._db.executemany(
                    "DELETE FROM chunks WHERE name = ? AND version = ? AND idx = ?",
                    ((manifest.name, manifest.version, i) for i in bad),
                )
            return bad or list(range(len(manifest.chunks)))
        target = self.blob_path(manifest.name, manifest.version)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("wb") as out:
            for index in range(len(manifest.chunks)):
                out.write((partial / str(index)).read_bytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        with transaction(self._db):
            row = self._db.execute(
                "SELECT current FROM active WHERE name = ?", (manifest.name,)
            ).fetchone()
            previous = row[0] if row and row[0] != manifest.version else None
            self._db.execute(
                "INSERT INTO active VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "current = excluded.current, previous = COALESCE(excluded.previous, previous)",
                (manifest.name, manifest.version, previous),
            )
        self._point_current(manifest.name)
        # The chunks are in the blob now, and only current and previous are kept: a node's
        # disk holds two versions of a model, not every one it was ever sent.
        shutil.rmtree(partial, ignore_errors=True)
        keep = set(self.active(manifest.name))
        for old in target.parent.iterdir():
            if old.name not in keep and old.name != CURRENT:
                old.unlink(missing_ok=True)
        return []

    def _point_current(self, name: str) -> None:
        """``blobs/<name>/current`` -> the active version, swapped atomically: what runs on
        the node opens that path and finds a whole, verified blob."""
        current = self.active(name)[0]
        if current is None:
            return
        link = self.directory / "blobs" / name / CURRENT
        tmp = link.with_name(f".{CURRENT}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(current)
        os.replace(tmp, link)

    def active(self, name: str) -> tuple[str | None, str | None]:
        """(current, previous) versions of ``name``."""
        row = self._db.execute(
            "SELECT current, previous FROM active WHERE name = ?", (name,)
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def rollback(self, name: str) -> str:
        """Make the previous version current again; returns it."""
        current, previous = self.active(name)
        if previous is None or current is None:
            raise LookupError(f"{name} has no previous version to roll back to")
        with transaction(self._db):
            self._db.execute(
                "UPDATE active SET current = ?, previous = ? WHERE name = ?",
                (previous, current, name),
            )
        self._point_current(name)
        return previous

    def need_message(self, manifest: Manifest, chunks: list[int]) -> bytes:
        return orjson.dumps({"name": manifest.name, "version": manifest.version, "chunks": chunks})
