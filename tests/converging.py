"""Waiting on a system that converges on its own (a cluster, a node, a device): ask again
until the answer is there or the deadline has passed. Nothing to await exists for these."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


async def until(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    within: float = 60.0,
    interval: float = 0.05,
) -> T:
    """The first truthy result of ``check``; fails the test, naming ``what``, at ``within``."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = await check()
                if result:
                    return result
                await asyncio.sleep(interval)  # polling a converging system: no event to await
    except TimeoutError:
        pytest.fail(f"timed out after {within}s waiting for {what}")
