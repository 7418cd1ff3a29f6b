"""Suite-wide rules: a test that leaks a task, a thread or a child process fails."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

pytest_plugins = ["tests.fixtures.postgres"]

_GRACE = 5.0  # what is stopping may take this long to be gone


def _children() -> set[int]:
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(autouse=True)
def _no_leaked_threads_or_processes() -> Iterator[None]:
    threads = set(threading.enumerate())
    children = _children()
    yield
    deadline = time.monotonic() + _GRACE
    while True:
        # asyncio_N threads are the test loop's default executor, joined when the loop closes.
        extra_threads = [
            t
            for t in threading.enumerate()
            if t not in threads and t.is_alive() and not t.name.startswith("asyncio_")
        ]
        extra_children = [p for p in _children() - children if _alive(p)]
        if not extra_threads and not extra_children:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)  # polling the OS for exits: there is nothing to wait on
    pytest.fail(f"test leaked threads {extra_threads} / child processes {extra_children}")


@pytest_asyncio.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    pending = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
    if pending:
        await asyncio.wait(pending, timeout=_GRACE)
        still = [t for t in pending if not t.done()]
        if still:
            for t in still:
                t.cancel()
            pytest.fail(f"test leaked asyncio tasks: {still}")
