"""Content-addressed artifact store: one interface, a local directory or S3 (``s3storage``).

Objects are keyed by the sha256 of their bytes (``sha256/<hex>`` under the store's root or
prefix), so a put of bytes already stored uploads nothing and a download can always be verified.
Downloads go chunk by chunk to ``<dest>.partial``, resume from what an interrupted download
left, and are renamed into place only after the whole file hashed to the expected digest:
a corrupted object is refused, never served.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import re
import tempfile
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

__all__ = [
    "CHUNK_SIZE",
    "PART_SIZE",
    "ArtifactError",
    "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactStore",
    "ArtifactTooLarge",
    "ChecksumMismatch",
    "LocalArtifactStore",
    "ProgressCallback",
    "open_store",
    "parse_digest",
]

CHUNK_SIZE = 8 * 1024 * 1024  # read/hash/download granularity: bounded memory for any file size
PART_SIZE = 8 * 1024 * 1024  # S3 multipart part size (S3's minimum is 5 MiB)
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

ProgressCallback = Callable[[int, int], object]  # on_chunk(done_bytes, total_bytes)


class ArtifactError(Exception):
    """An artifact cannot be stored or fetched; the message names the digest and the store."""


class ArtifactNotFound(ArtifactError):
    """No object with that digest in the store."""


class ArtifactTooLarge(ArtifactError):
    """The object is larger than the caller allows."""


class ChecksumMismatch(ArtifactError):
    """The bytes do not hash to the digest they are stored under: refused."""


@dataclass(frozen=True)
class ArtifactRef:
    """A stored object: ``digest`` is ``sha256:<64 hex>``; ``uri`` is where the store keeps it."""

    digest: str
    size: int
    uri: str


def parse_digest(digest: str) -> str:
    """The hex part of ``sha256:<64 lowercase hex>``; ValueError for anything else.

    Strict on purpose: the hex becomes a file name or an S3 key, so nothing like ``../`` passes.
    """
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise ValueError(f"not a digest: {digest!r} (expected 'sha256:' and 64 lowercase hex)")
    return match.group(1)


def _hash_file(path: Path, chunk_size: int = CHUNK_SIZE) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    # The rename itself must survive a power loss, not only the file's bytes.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingReader:
    """Wraps a binary stream: hashes and counts what the uploader reads through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def check(self, hexdigest: str, size: int) -> None:
        """Raise if what was read is not the content the key was computed from."""
        if self.count != size or self.hash.hexdigest() != hexdigest:
            raise ArtifactError(
                f"content changed while storing sha256:{hexdigest}: read {self.count} bytes "
                f"hashing to sha256:{self.hash.hexdigest()} (expected {size} bytes)"
            )


class ArtifactStore(ABC):
    """What every backend offers; the content addressing and the verified download live here.

    Backends implement the primitives: ``stat``, ``list``, ``open_range``, ``delete``, ``uri``
    and ``_write`` (store a stream under a digest, checking it hashes to it).
    """

    # -- backend primitives ------------------------------------------------------------------

    @abstractmethod
    def stat(self, digest: str) -> ArtifactRef | None:
        """The stored object's reference, or None if there is none."""

    @abstractmethod
    def list(self) -> list[ArtifactRef]:
        """Every stored object, in no particular order."""

    @abstractmethod
    def open_range(self, digest: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes of the object from ``offset`` (fewer only at its end)."""

    @abstractmethod
    def delete(self, digest: str) -> None:
        """Remove the object; removing an absent object is not an error."""

    @abstractmethod
    def uri(self, digest: str) -> str:
        """Where the object is (or would be) stored, e.g. ``s3://bucket/prefix/sha256/<hex>``."""

    @abstractmethod
    def _write(self, hexdigest: str, stream: _HashingReader, size: int) -> None:
        """Store ``size`` bytes from ``stream`` under the digest; call ``stream.check`` so that
        content which does not hash to the digest never becomes visible under it."""

    def close(self) -> None:  # noqa: B027 - optional hook: only backends with connections need it
        """Release connections; the store must not be used afterwards."""

    # -- shared logic --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def exists(self, digest: str) -> bool:
        return self.stat(digest) is not None

    def put_bytes(self, data: bytes) -> ArtifactRef:
        """Store ``data`` (idempotent: bytes already stored are not uploaded again)."""
        hexdigest = hashlib.sha256(data).hexdigest()
        return self._put(hexdigest, len(data), lambda: io.BytesIO(data))

    def put_file(self, path: Path | str) -> ArtifactRef:
        """Store a file of any size: hashed in chunks, then streamed (never read whole)."""
        path = Path(path)
        hexdigest, size = _hash_file(path)  # the key must be known before the upload starts
        return self._put(hexdigest, size, lambda: path.open("rb"))

    def _put(self, hexdigest: str, size: int, opener: Callable[[], BinaryIO]) -> ArtifactRef:
        digest = f"sha256:{hexdigest}"
        existing = self.stat(digest)
        if existing is not None and existing.size == size:
            return existing
        with opener() as stream:
            # The stream is hashed again as it is written: a file changed between the two
            # passes is refused instead of being stored under the wrong digest.
            self._write(hexdigest, _HashingReader(stream), size)
        return ArtifactRef(digest, size, self.uri(digest))

    def get(
        self,
        digest: str,
        dest: Path | str,
        *,
        chunk_size: int = CHUNK_SIZE,
        on_chunk: ProgressCallback | None = None,
        max_bytes: int | None = None,
    ) -> Path:
        """Download the object to ``dest``, verified against its digest; returns ``dest``.

        Resumes from ``<dest>.partial`` if an earlier download was interrupted. Raises
        ``ArtifactNotFound``, ``ArtifactTooLarge`` (size above ``max_bytes``) or
        ``ChecksumMismatch`` (the stored bytes are corrupt; nothing is left behind).
        ``on_chunk(done_bytes, total_bytes)`` is called after each chunk is written.
        """
        hexdigest = parse_digest(digest)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        dest = Path(dest)
        # Offline-friendly: an already verified copy needs no request to the store.
        if dest.is_file() and _hash_file(dest)[0] == hexdigest:
            return dest
        ref = self.stat(digest)
        if ref is None:
            raise ArtifactNotFound(f"{digest} is not in {self!r}")
        if max_bytes is not None and ref.size > max_bytes:
            raise ArtifactTooLarge(
                f"{digest} in {self!r} is {ref.size} bytes, more than the {max_bytes} allowed"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        with partial.open("a+b") as f:  # append mode: every write lands after what is there
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArtifactError(f"{partial} is being downloaded by another process") from None
            have = f.seek(0, os.SEEK_END)
            if have > ref.size:  # not a prefix of this object
                f.truncate(0)
                have = 0
            running = hashlib.sha256()
            f.seek(0)
            while len(chunk := f.read(min(chunk_size, have - f.tell()))) > 0:
                running.update(chunk)
            verified = self._fill(f, digest, running, have, ref.size, chunk_size, on_chunk)
            if verified is not None and have > 0:
                # The partial prefix may be what is corrupt, not the object: start over once.
                f.truncate(0)
                running = hashlib.sha256()
                verified = self._fill(f, digest, running, 0, ref.size, chunk_size, on_chunk)
            if verified is not None:
                partial.unlink()
                raise ChecksumMismatch(f"{digest} in {self!r} is corrupt: {verified}; refused")
            f.flush()
            os.fsync(f.fileno())
            os.replace(partial, dest)  # still locked: nobody appends to it meanwhile
        _fsync_dir(dest.parent)
        return dest

    def _fill(
        self,
        f: BinaryIO,
        digest: str,
        running: hashlib._Hash,
        done: int,
        total: int,
        chunk_size: int,
        on_chunk: ProgressCallback | None,
    ) -> str | None:
        """Append the object's bytes from ``done`` to ``total``; None if the whole hashes right,
        else what went wrong."""
        while done < total:
            want = min(chunk_size, total - done)
            data = self.open_range(digest, done, want)
            if not data or len(data) > want:
                return f"the object returned {len(data)} bytes at offset {done} of {total}"
            f.write(data)
            running.update(data)
            done += len(data)
            if on_chunk is not None:
                on_chunk(done, total)
        got = running.hexdigest()
        if got != parse_digest(digest):
            return f"its {total} bytes hash to sha256:{got}"
        return None


class LocalArtifactStore(ArtifactStore):
    """Objects as files ``<root>/sha256/<hex>``; written to a temporary file, then renamed."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self._dir = self.root / "sha256"

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"

    def _path(self, digest: str) -> Path:
        return self._dir / parse_digest(digest)

    def stat(self, digest: str) -> ArtifactRef | None:
        try:
            size = self._path(digest).stat().st_size
        except FileNotFoundError:
            return None
        return ArtifactRef(digest, size, self.uri(digest))

    def list(self) -> list[ArtifactRef]:
        if not self._dir.is_dir():
            return []
        refs = []
        for entry in os.scandir(self._dir):
            if _HEX.fullmatch(entry.name) and entry.is_file():  # skips in-flight temp files
                digest = f"sha256:{entry.name}"
                refs.append(ArtifactRef(digest, entry.stat().st_size, self.uri(digest)))
        return refs

    def open_range(self, digest: str, offset: int, length: int) -> bytes:
        try:
            with self._path(digest).open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise ArtifactNotFound(f"{digest} is not in {self!r}") from None

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def uri(self, digest: str) -> str:
        return self._path(digest).as_uri()

    def _write(self, hexdigest: str, stream: _HashingReader, size: int) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        # Same directory as the final name: os.replace is then an atomic rename, so a crash
        # leaves at most a dot-file that list() ignores, never a half object under the key.
        fd, tmp_name = tempfile.mkstemp(dir=self._dir, prefix=f".{hexdigest[:12]}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK_SIZE):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            stream.check(hexdigest, size)
            os.replace(tmp, self._dir / hexdigest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self._dir)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def open_store(url: str) -> ArtifactStore:
    """A store from a URL.

    ``file:///abs/dir`` or a plain path: a local directory. ``s3://bucket/prefix?endpoint=
    host:port&secure=false&region=r``: S3, with credentials from ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (or ``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY``); ``endpoint``
    defaults to AWS (``s3.amazonaws.com``) and ``secure`` to true. ValueError says what is wrong.
    """
    if not url:
        raise ValueError("empty artifact store URL")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "":
        return LocalArtifactStore(Path(url))
    if parsed.scheme == "file":
        if parsed.netloc not in {"", "localhost"}:
            raise ValueError(f"file URL {url!r} names host {parsed.netloc!r}: only local paths")
        if parsed.query or parsed.fragment:
            raise ValueError(f"file URL {url!r} must not have a query or fragment")
        path = urllib.parse.unquote(parsed.path)
        if not path.startswith("/"):
            raise ValueError(f"file URL {url!r} needs an absolute path (file:///abs/dir)")
        return LocalArtifactStore(Path(path))
    if parsed.scheme != "s3":
        raise ValueError(
            f"unsupported artifact store URL scheme {parsed.scheme!r} in {url!r}: "
            "use file:///abs/dir, a path, or s3://bucket/prefix?endpoint=host:port"
        )
    if "@" in parsed.netloc:
        raise ValueError(
            f"credentials in {url!r} would end up in logs: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY instead"
        )
    bucket = parsed.netloc
    if not bucket:
        raise ValueError(f"S3 URL {url!r} has no bucket (s3://bucket/prefix)")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r} in {url!r}")
    if parsed.fragment:
        raise ValueError(f"S3 URL {url!r} must not have a fragment")
    try:
        query = urllib.parse.parse_qs(
            parsed.query, keep_blank_values=True, strict_parsing=bool(parsed.query)
        )
    except ValueError as e:
        raise ValueError(f"malformed query in S3 URL {url!r}: {e}") from None
    unknown = set(query) - {"endpoint", "secure", "region"}
    if unknown:
        raise ValueError(
            f"unknown S3 URL parameter(s) {sorted(unknown)} in {url!r}: "
            "known are endpoint, secure, region"
        )
    for name, values in query.items():
        if len(values) != 1 or not values[0]:
            raise ValueError(f"S3 URL parameter {name!r} needs exactly one value in {url!r}")
    endpoint = query.get("endpoint", ["s3.amazonaws.com"])[0]
    if "/" in endpoint or "://" in endpoint:
        raise ValueError(f"S3 endpoint must be host[:port], not {endpoint!r}")
    secure_text = query.get("secure", ["true"])[0].lower()
    if secure_text not in _TRUE | _FALSE:
        raise ValueError(f"S3 URL parameter secure={secure_text!r} is not a boolean in {url!r}")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("MINIO_ACCESS_KEY")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY") or os.environ.get("MINIO_SECRET_KEY")
    if not access_key or not secret_key:
        raise ValueError(
            f"no S3 credentials for {url!r}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or MINIO_ACCESS_KEY and MINIO_SECRET_KEY)"
        )
    from .s3storage import S3ArtifactStore  # minio is imported only by S3 users

    return S3ArtifactStore(
        endpoint,
        bucket,
        access_key,
        secret_key,
        secure=secure_text in _TRUE,
        region=query.get("region", [None])[0],
        prefix=urllib.parse.unquote(parsed.path),
    )
