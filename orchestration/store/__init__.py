"""Revisioned key/value store (kine's design): SQLite embedded, PostgreSQL for replicas."""

from ._base import (
    CompactedError,
    Event,
    FutureRevisionError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    ListResult,
    RevisionMismatchError,
    Store,
    StoreError,
    WatchOverflowError,
)

__all__ = [
    "CompactedError",
    "Event",
    "FutureRevisionError",
    "KeyExistsError",
    "KeyNotFoundError",
    "KeyValue",
    "ListResult",
    "RevisionMismatchError",
    "Store",
    "StoreError",
    "WatchOverflowError",
]
