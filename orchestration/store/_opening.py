"""Pick a store backend from a URL, as ``--store`` / ``--datastore-endpoint`` give it."""

from __future__ import annotations

from urllib.parse import urlsplit

from ._base import Store


def open_store(url: str) -> Store:
    """A (not yet started) store for ``url``.

    ``sqlite:///abs/path.db`` (absolute), ``sqlite://relative/path.db`` (relative to the
    working directory), ``postgresql://…`` or ``postgres://…`` (an asyncpg DSN).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from ._sqlite import SQLiteStore

        path = url.split("://", 1)[1] if "://" in url else ""
        if not path or path == "/":
            raise ValueError(f"store URL {url!r} has no database path: use sqlite:///abs/path.db")
        return SQLiteStore(path)
    if scheme in ("postgresql", "postgres"):
        from ._postgres import PostgresStore

        return PostgresStore(url)
    # Only the scheme is echoed: a URL may carry a password.
    raise ValueError(
        f"unsupported store URL scheme {scheme!r}: use sqlite:///path/to/state.db or "
        "postgresql://user@host:port/dbname"
    )
