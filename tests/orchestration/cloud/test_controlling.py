"""The work queue the controllers share."""

from __future__ import annotations

import asyncio

from orbiter.orchestration.cloud import WorkQueue
from orbiter.orchestration.cloud.controlling import selector_matches


async def test_a_key_queued_twice_is_processed_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]


async def test_a_key_is_never_processed_twice_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")  # changed while being processed: queued again only when done
    assert len(queue) == 0
    queue.done("a")
    assert len(queue) == 1 and await queue.get() == "a"


async def test_failures_back_off_and_forget_resets() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.04)
    loop = asyncio.get_running_loop()
    delays = []
    for _ in range(4):
        start = loop.time()
        queue.add_rate_limited("k")
        assert await queue.get() == "k"
        delays.append(loop.time() - start)
        queue.done("k")
    assert delays[0] >= 0.01 and delays[1] >= 0.02 and delays[3] >= 0.04
    assert queue.failures("k") == 4
    queue.forget("k")
    assert queue.failures("k") == 0


async def test_shutdown_wakes_waiting_workers() -> None:
    from orbiter.orchestration.cloud import QueueShutDown

    queue: WorkQueue[str] = WorkQueue()
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.shutdown()
    try:
        await waiter
    except QueueShutDown:
        pass
    else:
        raise AssertionError("get() returned after shutdown")


def test_label_selectors() -> None:
    labels = {"app": "web", "tier": "front"}
    assert selector_matches({"matchLabels": {"app": "web"}}, labels)
    assert not selector_matches({"matchLabels": {"app": "db"}}, labels)
    assert not selector_matches({}, labels)  # an empty selector claims nothing
    exprs = [
        {"key": "tier", "operator": "In", "values": ["front", "back"]},
        {"key": "env", "operator": "NotIn", "values": ["prod"]},
        {"key": "app", "operator": "Exists"},
        {"key": "canary", "operator": "DoesNotExist"},
    ]
    assert selector_matches({"matchExpressions": exprs}, labels)
    assert not selector_matches({"matchExpressions": exprs}, {**labels, "canary": "1"})
