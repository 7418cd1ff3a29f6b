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
from ._opening import open_store
from ._postgres import PostgresStore
from ._sqlite import SQLiteStore

__all__ = [
    "CompactedError",
    "Event",
    "FutureRevisionError",
    "KeyExistsError",
    "KeyNotFoundError",
    "KeyValue",
    "ListResult",
    "PostgresStore",
    "RevisionMismatchError",
    "SQLiteStore",
    "Store",
    "StoreError",
    "WatchOverflowError",
    "open_store",
]
