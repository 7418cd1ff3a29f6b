"""One explicit SQLite transaction, or a savepoint inside an open one.

The spool and the receipts open SQLite in autocommit mode (``isolation_level=None``), where
``with connection:`` begins nothing: each statement would commit alone. What must be atomic
(a receipt and the application it records, a message and the rows it replaces) goes
through ``transaction``. Inside a caller's batch it becomes a savepoint, so one message can
be refused (rolled back) without undoing the rest of the batch.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator

__all__ = ["transaction"]

_names = itertools.count()


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    if db.in_transaction:
        name = f"sp{next(_names)}"
        db.execute(f"SAVEPOINT {name}")
        try:
            yield db
        except BaseException:
            db.execute(f"ROLLBACK TO {name}")
            db.execute(f"RELEASE {name}")
            raise
        db.execute(f"RELEASE {name}")
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
