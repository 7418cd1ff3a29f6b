"""The HTTP transport: any Kubernetes API server (ours or a real one) via ``kubernetes.aio``.

The official asyncio client supplies what is hard to get right alone: kubeconfig and
in-cluster loading (CA, client certificates, tokens, exec and OIDC plugins, proxies), TLS,
and per-request authentication with token refresh. Its generated typed APIs are not used:
requests go to generic REST paths, so every resource works, CRDs included, and objects stay
plain JSON dicts. ``kubernetes`` is imported only when a client is built (edge nodes lack it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from ._base import Client, PatchType, Resource, client_error, object_name, request_namespace

_PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",  # JSON is YAML: the body is sent as JSON
}
_WATCH_GRACE = 30.0  # how long past timeoutSeconds a silent server is tolerated

Query = Sequence[tuple[str, str]]
Prepare = Callable[[Any], Awaitable[None]]


def resource_path(
    res: Resource, namespace: str | None = None, name: str = "", subresource: str = ""
) -> str:
    """``/api/v1/namespaces/ns/pods/name/status`` and the like; names are URL-quoted.
    "." and ".." survive quoting and a URL library folds them away (``namespaces/../pods``
    would list every namespace's pods): they are refused, as Kubernetes refuses them."""
    for value in (namespace, name):
        if value in (".", ".."):
            raise ValueError(f"{value!r} may not be a namespace or object name")
    parts = [f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"]
    if res.namespaced and namespace:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(res.plural)
    if name:
        parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
    return "/".join(parts)


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    raw = await resp.read()
    try:
        status = orjson.loads(raw)
    except orjson.JSONDecodeError:
        status = None
    if isinstance(status, dict) and status.get("kind") == "Status":
        raise client_error(
            resp.status, str(status.get("reason") or ""), str(status.get("message") or "")
        )
    raise client_error(resp.status, resp.reason or "", raw.decode("utf-8", "replace").strip())


def _event(line: bytes | bytearray) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(line)
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        raise client_error(
            int(status.get("code") or 500),
            str(status.get("reason") or ""),
            str(status.get("message") or ""),
        )
    return event


class KubeClient(Client):
    """``Client`` over HTTPS. Build it with ``from_kubeconfig`` or ``in_cluster``.

    ``configuration`` is a ``kubernetes.aio.client.Configuration``; ``prepare`` completes it
    (credentials may need I/O, e.g. an exec plugin) before the first request.
    Connection failures surface as aiohttp/OS errors, API refusals as ``ClientError``.
    """

    def __init__(self, configuration: Any, prepare: Prepare | None = None) -> None:
        self.configuration = configuration
        self._prepare = prepare
        self._api_client: Any = None
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, context: str | None = None
    ) -> KubeClient:
        """From a kubeconfig (default: ``$KUBECONFIG``, then ``~/.kube/config``).

        The file and context are read now, so a bad one fails here; credentials load on the
        first request.
        """
        from kubernetes.aio.client import Configuration
        from kubernetes.aio.config import kube_config

        paths = (
            os.fspath(path) if path is not None else os.environ.get("KUBECONFIG", "~/.kube/config")
        )
        merged = kube_config.KubeConfigMerger(paths)  # type: ignore[no-untyped-call]
        if merged.config is None:
            raise FileNotFoundError(f"no kubeconfig found at {paths}")
        loader = kube_config.KubeConfigLoader(  # type: ignore[no-untyped-call]
            config_dict=merged.config, config_base_path=None, active_context=context
        )

        async def prepare(conf: Any) -> None:
            await loader.load_and_set(conf)  # type: ignore[no-untyped-call]
            if hasattr(loader, "exec_plugin_expiry"):
                # An exec plugin's token expires; rerun the plugin when it does.
                async def refresh(conf: Any) -> None:
                    if await loader.load_from_exec_plugin():  # type: ignore[no-untyped-call]
                        conf.api_key["BearerToken"] = loader.token

                conf.refresh_api_key_hook = refresh

        return cls(Configuration(), prepare)

    @classmethod
    def in_cluster(cls) -> KubeClient:
        """From a pod's service account (the token file is re-read as it rotates)."""
        from kubernetes.aio.client import Configuration
        from kubernetes.aio.config import incluster_config

        conf = Configuration()
        incluster_config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
        return cls(conf)

    async def _client(self) -> Any:
        if self._api_client is None:
            async with self._lock:
                if self._closed:
                    raise RuntimeError("the client is closed")
                if self._api_client is None:
                    from kubernetes.aio.client import ApiClient

                    if self._prepare is not None:
                        await self._prepare(self.configuration)
                    self._api_client = ApiClient(self.configuration)
        return self._api_client

    async def _send(
        self,
        method: str,
        path: str,
        query: Query = (),
        body: Any = None,
        *,
        content_type: str = "application/json",
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """The response, its status checked; the caller reads and releases it."""
        api = await self._client()
        method, url, headers, _, _ = await api.param_serialize(
            method,
            path,
            query_params=list(query),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        rest = await api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=client_timeout
        )
        resp: aiohttp.ClientResponse = rest.response
        try:
            await _raise_for_status(resp)
        except BaseException:
            resp.release()
            raise
        return resp

    async def _request(
        self,
        method: str,
        path: str,
        query: Query = (),
        body: Any = None,
        *,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        resp = await self._send(method, path, query, body, content_type=content_type)
        try:
            raw = await resp.read()
        finally:
            resp.release()
        result: dict[str, Any] = orjson.loads(raw)
        return result

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        path = resource_path(res, request_namespace(res, namespace), name)
        return await self._request("GET", path)

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
        query = _selection(label_selector, field_selector)
        if limit:
            query.append(("limit", str(limit)))
        if continue_token:
            query.append(("continue", continue_token))
        return await self._request("GET", resource_path(res, namespace), query)

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
        query = [("watch", "true"), *_selection(label_selector, field_selector)]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if allow_bookmarks:
            query.append(("allowWatchBookmarks", "true"))
        if timeout_seconds:
            query.append(("timeoutSeconds", str(timeout_seconds)))
        total = timeout_seconds + _WATCH_GRACE if timeout_seconds else None
        resp = await self._send(
            "GET",
            resource_path(res, namespace),
            query,
            client_timeout=aiohttp.ClientTimeout(total=total, sock_connect=_WATCH_GRACE),
        )
        try:
            # One JSON event per line, parsed as chunks arrive; no line length limit.
            buffer = bytearray()
            async for chunk in resp.content.iter_any():
                buffer += chunk
                if b"\n" not in chunk:
                    continue
                *lines, rest = buffer.split(b"\n")
                buffer = bytearray(rest)
                for line in lines:
                    if line.strip():
                        yield _event(line)
            if buffer.strip():
                yield _event(buffer)
        finally:
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()  # abandoned mid-stream: the connection cannot be reused

    async def create(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        ns = request_namespace(res, namespace, obj)
        name = object_name(obj) if subresource else ""
        path = resource_path(res, ns, name, subresource)
        return await self._request("POST", path, body=obj)

    async def replace(
        self,
        res: Resource,
        obj: dict[str, Any],
        namespace: str | None = None,
        *,
        subresource: str = "",
    ) -> dict[str, Any]:
        ns = request_namespace(res, namespace, obj)
        path = resource_path(res, ns, object_name(obj), subresource)
        return await self._request("PUT", path, body=obj)

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
        query: list[tuple[str, str]] = []
        if field_manager:
            query.append(("fieldManager", field_manager))
        if patch_type == "apply":
            query.append(("force", "true"))
        path = resource_path(res, request_namespace(res, namespace), name, subresource)
        return await self._request(
            "PATCH", path, query, patch, content_type=_PATCH_CONTENT_TYPES[patch_type]
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
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if preconditions:
            options["preconditions"] = dict(preconditions)
        path = resource_path(res, request_namespace(res, namespace), name)
        return await self._request("DELETE", path, body=options)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            api, self._api_client = self._api_client, None
        if api is not None:
            await api.close()


def _selection(label_selector: str, field_selector: str) -> list[tuple[str, str]]:
    query = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return query
