"""The in-process transport: ``API`` calls without HTTP, with the same semantics as the wire.

Objects cross the boundary as fresh JSON copies both ways: the server mutates what it is
given (defaults, metadata), write hooks may keep what it wrote, and watch event objects are
shared between watchers, so neither side may hold a reference to the other's dicts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import orjson

from ..apis import ResourceType
from ..apiserver.errors import APIError
from ..apiserver.handling import API, Options
from ..apiserver.selection import build_matcher
from ..store import CompactedError, StoreError
from ._base import (
    Client,
    ClientError,
    ExpiredError,
    PatchType,
    Resource,
    client_error,
    object_name,
    request_namespace,
)

T = TypeVar("T")


def _copy(obj: T) -> T:
    # A JSON round trip: a deep copy that also refuses what the wire could not carry.
    copied: T = orjson.loads(orjson.dumps(obj))
    return copied


class LocalClient(Client):
    """``Client`` over an ``API`` in the same process (the API server's own controllers).

    ``bookmark_interval`` is how long a watch asking for bookmarks may stay silent.
    """

    def __init__(self, api: API, *, bookmark_interval: float = 60.0) -> None:
        self.api = api
        self.bookmark_interval = bookmark_interval

    def _type(self, res: Resource) -> ResourceType:
        rt = self.api.registry.lookup(res.group, res.version, res.plural)
        if rt is None:
            raise client_error(404, "NotFound", "the server could not find the requested resource")
        return rt

    @staticmethod
    async def _call(call: Awaitable[T]) -> T:
        try:
            return await call
        except APIError as exc:
            raise client_error(exc.code, exc.reason, exc.message) from None

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        rt = self._type(res)
        obj = await self._call(self.api.get(rt, request_namespace(res, namespace), name))
        return obj  # decoded from the store for this call alone: already a private copy

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
        rt = self._type(res)
        try:
            matches = build_matcher(rt, label_selector, field_selector)
        except APIError as exc:
            raise client_error(exc.code, exc.reason, exc.message) from None
        return await self._call(
            self.api.list(
                rt,
                namespace if res.namespaced else None,
                matches=matches,
                limit=limit,
                continue_token=continue_token,
            )
        )

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
        rt = self._type(res)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds if timeout_seconds else None
        try:
            async with asyncio.timeout_at(deadline):
                stream = await self.api.watch(
                    rt,
                    namespace if res.namespaced else None,
                    resource_version=resource_version,
                    matches=build_matcher(rt, label_selector, field_selector),
                    bookmark_interval=self.bookmark_interval if allow_bookmarks else None,
                )
        except APIError as exc:
            raise client_error(exc.code, exc.reason, exc.message) from None
        except TimeoutError:
            return
        events = stream.__aiter__()
        try:
            while True:
                # The deadline guards only the wait for the next event, never the caller's
                # code between two events (a timeout spanning a yield would cancel the caller).
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(events)
                except (StopAsyncIteration, TimeoutError):
                    return
                except CompactedError as exc:
                    raise ExpiredError(410, "Expired", str(exc)) from None
                except StoreError as exc:  # e.g. the watcher fell behind: as HTTP reports it
                    raise ClientError(500, "InternalError", f"watch ended: {exc}") from None
                # Event objects are shared between watchers; the cached wire line decodes
                # into a private copy, exactly what an HTTP client would receive.
                yield orjson.loads(event.line())
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def create(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        rt = self._type(res)
        ns = request_namespace(res, namespace, obj)
        if subresource:
            # As the HTTP server routes a POST to a named object's subresource.
            if subresource not in rt.subresources:
                raise client_error(
                    404, "NotFound", "the server could not find the requested resource"
                )
            if subresource != "binding":
                raise client_error(
                    405,
                    "MethodNotAllowed",
                    f"POST on a named object is not supported on resources of kind {rt.kind!r}",
                )
            name = object_name(obj)
            return _copy(await self._call(self.api.bind(rt, ns, name, _copy(obj))))
        return _copy(await self._call(self.api.create(rt, ns, _copy(obj))))

    async def replace(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        rt = self._type(res)
        ns = request_namespace(res, namespace, obj)
        name = object_name(obj)
        body = _copy(obj)
        if subresource == "scale":
            return await self._call(self.api.update_scale(rt, ns, name, body))
        return _copy(await self._call(self.api.update(rt, ns, name, body, subresource=subresource)))

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
        rt = self._type(res)
        ns = request_namespace(res, namespace)
        # Server-side apply from a client always forces, as KubeClient sends force=true.
        opts = Options(field_manager=field_manager, force=patch_type == "apply")
        patched = await self._call(
            self.api.patch_with(
                rt, ns, name, patch_type, _copy(patch), opts, subresource=subresource
            )
        )
        return _copy(patched)

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        preconditions: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        rt = self._type(res)
        options: dict[str, Any] = {}
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if preconditions:
            options["preconditions"] = dict(preconditions)
        ns = request_namespace(res, namespace)
        deleted = await self._call(self.api.delete(rt, ns, name, options))
        return _copy(deleted)

    async def close(self) -> None:
        """Nothing to release: the API belongs to whoever made it."""
