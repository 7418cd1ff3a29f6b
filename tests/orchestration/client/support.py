"""Test doubles: a client that records and can hold calls, and a handler that records events.

Both notify a condition on every change, so tests wait for states, never for time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from orbiter.orchestration.client import Client, PatchType, Resource

WAIT = 10.0  # generous: a deadline for failures, never a delay on success


class Notifier:
    def __init__(self) -> None:
        self._changed = asyncio.Condition()

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], within: float = WAIT) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)


class Recorder(Client, Notifier):
    """Delegates to ``inner``; counts lists and watches; ``gate`` holds new watches;
    ``fail_lists`` makes that many lists fail as a dropped connection would."""

    def __init__(self, inner: Client) -> None:
        Notifier.__init__(self)
        self.inner = inner
        self.lists = 0
        self.watches: list[str] = []  # the resourceVersion each watch started from
        self.open_watches = 0
        self.fail_lists = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.inner.get(res, name, namespace)

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> dict[str, Any]:
        if self.fail_lists:
            self.fail_lists -= 1
            await self.notify()
            raise ConnectionResetError("injected: connection reset")
        result = await self.inner.list(
            res,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
            continue_token=continue_token,
        )
        self.lists += 1
        await self.notify()
        return result

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str = "",
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int | None = None,
        allow_bookmarks: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        self.watches.append(resource_version)
        await self.notify()
        await self.gate.wait()
        stream = self.inner.watch(
            res,
            namespace,
            resource_version=resource_version,
            label_selector=label_selector,
            field_selector=field_selector,
            timeout_seconds=timeout_seconds,
            allow_bookmarks=allow_bookmarks,
        )
        self.open_watches += 1
        try:
            async for event in stream:
                yield event
        finally:
            await aclose(stream)
            self.open_watches -= 1
            await self.notify()

    async def create(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        return await self.inner.create(res, obj, namespace, subresource=subresource)

    async def replace(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        return await self.inner.replace(res, obj, namespace, subresource=subresource)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
        subresource: str = "",
        field_manager: str = "",
    ) -> dict[str, Any]:
        return await self.inner.patch(
            res,
            name,
            patch,
            namespace,
            patch_type=patch_type,
            subresource=subresource,
            field_manager=field_manager,
        )

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        preconditions: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        return await self.inner.delete(
            res, name, namespace, propagation_policy=propagation_policy, preconditions=preconditions
        )

    async def close(self) -> None:
        """The inner client belongs to the test's fixture."""


class EventLog(Notifier):
    """An informer handler: ``(type, name, obj, old)`` per call."""

    def __init__(self, fail_on: str = "") -> None:
        super().__init__()
        self.seen: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = []
        self.fail_on = fail_on  # a name whose events make the handler raise

    async def __call__(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = obj["metadata"]["name"]
        self.seen.append((etype, name, obj, old))
        await self.notify()
        if name == self.fail_on:
            raise RuntimeError(f"handler refuses {name}")

    def pairs(self, start: int = 0) -> list[tuple[str, str]]:
        return [(etype, name) for etype, name, _, _ in self.seen[start:]]


async def aclose(stream: AsyncIterator[Any]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def configmap(name: str, data: dict[str, str] | None = None, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": data or {},
    }


def deployment(name: str, *containers: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": c, "image": f"{c}:1"} for c in containers]},
            },
        },
    }
