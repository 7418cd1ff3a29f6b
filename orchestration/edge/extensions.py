"""Extensions: what layers above orchestration run inside EdgeCore (e.g. the AI local
controller), without this layer knowing them.

An extension is built by its factory from an :class:`EdgeContext` when EdgeCore starts (after
its store and spool are up) and stopped first when EdgeCore stops. ``context.report(key,
source, content)`` puts ``content`` in the node's store-and-forward spool: one message per
``key`` (a newer report replaces a pending one; ``coalesce=False`` keeps each, for events and
results), sent when the link is up in ``priority`` order (``Priority.RESULT`` for inference
results, ``Priority.BULK`` for bulk data; status by default), kept across restarts and offline
periods until the cloud acknowledges it, or dropped (and counted) after ``ttl`` seconds. The
cloud hands it, once, to the upstream handler registered for ``source``
(``Cloud(upstream=...)``); the message is ``update`` in group ``resource`` with ``resource`` =
``key``. Down the other way, ``context.on_blob(callback)`` hears of each blob the cloud sent
(``NodeSync.offer``, resumed across links) once it is verified and active.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..protocol.envelopes import Priority

__all__ = [
    "BlobCallback",
    "EdgeContext",
    "EdgeExtension",
    "EdgeExtensionFactory",
    "Report",
    "outbox_key",
]


def outbox_key(key: str) -> str:
    """The outbox row of an extension's ``key``: its own namespace, so it never coalesces
    with (or replaces) a built-in report."""
    return f"extension/{key}"


class Report(Protocol):
    def __call__(
        self,
        key: str,
        source: str,
        content: dict[str, Any],
        *,
        priority: Priority = ...,
        ttl: float | None = ...,
        coalesce: bool = ...,
    ) -> None: ...


BlobCallback = Callable[[str, str, Path], None]


@dataclass(frozen=True, slots=True)
class EdgeContext:
    """What an extension gets from the EdgeCore that runs it."""

    node_name: str
    data_dir: Path  # the node's data dir; an extension keeps its files under it
    report: Report  # (key, source, content), never blocks
    loop: asyncio.AbstractEventLoop
    # ``on_blob(callback)``: ``callback(name, version, path)`` whenever a blob the cloud sent
    # (``NodeSync.offer``) is verified and active; ``blobs / name / "current"`` links to it.
    on_blob: Callable[[BlobCallback], None]
    blobs: Path


class EdgeExtension(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


EdgeExtensionFactory = Callable[[EdgeContext], EdgeExtension]
