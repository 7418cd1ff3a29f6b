"""Waiting on conditions (never on the clock) and standing in for the nodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from orbiter.orchestration.client import PODS, Client, ConflictError, NotFoundError, Resource

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], within: float = 20.0, interval: float = 0.02
) -> T:
    """Run ``check`` until it stops raising AssertionError (or NotFoundError: not there
    yet); the last failure if ``within`` seconds pass first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await check()
        except (AssertionError, NotFoundError):
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(interval)


async def patch(
    client: Client, res: Resource, name: str, body: Any, namespace: str | None, **kw: Any
) -> dict[str, Any]:
    """``client.patch``, retried on 409: the server answers a patch without resourceVersion
    with Conflict when a concurrent write wins the race (Kubernetes retries those itself),
    and the controllers write the same objects all the time."""
    for _ in range(50):
        try:
            return await client.patch(res, name, body, namespace, **kw)
        except ConflictError:
            await asyncio.sleep(0.01)
    return await client.patch(res, name, body, namespace, **kw)


def is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


class Kubelet:
    """Marks every pod of a namespace Running and Ready, as nodes would (none exist yet)."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Kubelet:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async for event in self.client.watch(PODS, self.namespace):
            pod = event["object"]
            if event["type"] not in ("ADDED", "MODIFIED") or is_ready(pod):
                continue
            if pod["metadata"].get("deletionTimestamp"):
                continue
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            status = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }
            with contextlib.suppress(NotFoundError):
                await patch(
                    self.client,
                    PODS,
                    pod["metadata"]["name"],
                    {"status": status},
                    self.namespace,
                    subresource="status",
                )


class DeletionLog:
    """The store revision at which each object of some resources was deleted."""

    def __init__(self, client: Client, namespace: str, resources: list[Resource]) -> None:
        self.client = client
        self.namespace = namespace
        self.resources = resources
        self.deleted: dict[tuple[str, str], int] = {}  # (plural, name) -> revision
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> DeletionLog:
        for res in self.resources:
            listed = await self.client.list(res, self.namespace)
            rv = listed["metadata"]["resourceVersion"]
            self._tasks.append(asyncio.create_task(self._follow(res, rv)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, res: Resource, rv: str) -> None:
        async for event in self.client.watch(res, self.namespace, resource_version=rv):
            if event["type"] == "DELETED":
                meta = event["object"]["metadata"]
                self.deleted[(res.plural, meta["name"])] = int(meta["resourceVersion"])
