"""A runtime factory whose teardown stops every process the test started, and proves it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
from orbiter.orchestration.edge.runtime import BackoffPolicy, ProcessRuntime

from .support import eventually, processes_under

MakeRuntime = Callable[..., Awaitable[ProcessRuntime]]
FAST = BackoffPolicy(initial=0.05, maximum=0.4)


@pytest_asyncio.fixture
async def make_runtime(tmp_path: Path) -> AsyncIterator[MakeRuntime]:
    root = tmp_path / "runtime"
    made: list[ProcessRuntime] = []

    async def make(**kwargs: Any) -> ProcessRuntime:
        kwargs.setdefault("backoff", FAST)
        kwargs.setdefault("resync_period", 0.2)
        rt = ProcessRuntime(root, **kwargs)
        made.append(rt)
        await rt.start()
        return rt

    yield make
    for rt in made:
        await rt.shutdown_all(0)
    # what a closed runtime left running is adopted, then stopped, by a last one
    sweeper = ProcessRuntime(root, backoff=FAST)
    await sweeper.start()
    await sweeper.shutdown_all(0)

    def nothing_left() -> None:
        assert processes_under(root) == []

    await eventually(nothing_left, within=10)
