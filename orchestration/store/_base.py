"""The revisioned store's contract, shared by every backend.

One append-only log of key/value rows (kine's design): each write is a new row whose id is the
cluster-wide revision, which the API server shows as ``metadata.resourceVersion``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal


class StoreError(Exception):
    """Base class of the store's refusals."""


class KeyExistsError(StoreError):
    """A create found a live row for the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} already exists")
        self.key = key


class KeyNotFoundError(StoreError):
    """An update or delete found no live row for the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} not found")
        self.key = key


class RevisionMismatchError(StoreError):
    """Compare-and-swap failed: the key's current revision is not the expected one."""

    def __init__(self, key: str, expected: int, current: KeyValue) -> None:
        super().__init__(
            f"key {key!r} is at revision {current.mod_revision}, not the expected {expected}"
        )
        self.key = key
        self.expected = expected
        self.current = current


class CompactedError(StoreError):
    """A read or watch asked for a revision older than the compacted one (HTTP 410)."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted; the oldest available is {compacted + 1}"
        )
        self.requested = requested
        self.compacted = compacted


class FutureRevisionError(StoreError):
    """A list asked for a revision the store has not reached yet."""

    def __init__(self, requested: int, current: int) -> None:
        super().__init__(f"revision {requested} is newer than the current revision {current}")
        self.requested = requested
        self.current = current


class WatchOverflowError(StoreError):
    """A watcher fell too far behind; its stream ends and the client must re-watch or relist."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(slots=True)
class Event:
    """One committed change. For a delete, ``kv`` holds the last value at the delete's revision.

    ``memo`` lets upper layers cache work derived from the event (its encoded watch line) so
    it is done once for all watchers; events are shared between watchers, never copied.
    """

    type: Literal["ADDED", "MODIFIED", "DELETED"]
    kv: KeyValue
    prev: KeyValue | None = None
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


@dataclass(frozen=True, slots=True)
class ListResult:
    kvs: list[KeyValue]
    revision: int  # the revision the list was read at
    more: bool  # True when ``limit`` cut the answer short
    remaining: int = 0  # live keys after the last returned one (when ``more``)


class Store(abc.ABC):
    """Async, revisioned key/value store with compare-and-swap and watch.

    Keys are ``/``-separated paths; ``list`` and ``watch`` take a prefix. All revisions are
    positive ints; revision 0 in a read means "the current one".
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections, create the schema, start background loops."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background loops and close connections; end every open watch."""

    @abc.abstractmethod
    async def current_revision(self) -> int: ...

    @abc.abstractmethod
    async def compacted_revision(self) -> int: ...

    @abc.abstractmethod
    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        """The live row for ``key`` at ``revision`` (0: now), or None."""

    @abc.abstractmethod
    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_after: str = ""
    ) -> ListResult:
        """Live rows under ``prefix`` at one consistent revision, ordered by key.

        ``start_after`` continues a paginated list: only keys greater than it are returned.
        Raises CompactedError / FutureRevisionError for a revision outside the log.
        """

    @abc.abstractmethod
    async def count(self, prefix: str) -> int: ...

    @abc.abstractmethod
    async def create(self, key: str, value: bytes) -> KeyValue:
        """Insert the first live row for ``key``; KeyExistsError if one exists."""

    @abc.abstractmethod
    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        """Replace the value if the key is at ``expected_revision``.

        RevisionMismatchError (carrying the current row) or KeyNotFoundError otherwise.
        """

    @abc.abstractmethod
    async def delete(self, key: str, expected_revision: int = 0) -> KeyValue:
        """Delete the key (if at ``expected_revision`` when non-zero); returns the deleted row
        with ``mod_revision`` set to the delete's revision."""

    @abc.abstractmethod
    def watch(self, prefix: str, after: int) -> AsyncIterator[Event]:
        """Every event under ``prefix`` with revision > ``after``, in revision order, replayed
        from the log and then live, with no gap and no duplicate.

        CompactedError is raised (on first iteration) when ``after`` < compacted revision.
        WatchOverflowError ends the stream of a watcher that fell too far behind. The iterator
        ends when the store closes. Closing the iterator (``aclose``) releases the watcher.
        """

    @abc.abstractmethod
    async def compact(self, revision: int) -> int:
        """Drop superseded and deleted rows at or below ``revision``; returns the new compacted
        revision. Lists and watches from older revisions then raise CompactedError."""
