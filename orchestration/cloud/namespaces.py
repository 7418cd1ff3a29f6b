"""Namespace lifecycle: empty a terminating namespace before it goes, and give every live
namespace its ``default`` ServiceAccount.

A deleted namespace keeps ``spec.finalizers: [kubernetes]`` (and ``status.phase:
Terminating``) until everything namespaced in it is gone, built-in resources and those of
every namespaced CRD alike; the controller deletes it all, comes back while objects with
finalizers linger, then clears its finalizer through the ``finalize`` subresource.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Iterable
from typing import Any

from ..client import (
    CONFIGMAPS,
    CRDS,
    DEPLOYMENTS,
    EVENTS,
    LEASES,
    NAMESPACES,
    PODS,
    REPLICASETS,
    SECRETS,
    SERVICEACCOUNTS,
    Client,
    ClientError,
    ConflictError,
    NotFoundError,
    Resource,
)
from .controlling import SERVICES, Controller, Informers, being_deleted, crd_resource, meta

log = logging.getLogger(__name__)

FINALIZER = "kubernetes"
DEFAULT_SERVICEACCOUNT = "default"

# Owners before what they own, so controllers see their objects go rather than recreate them.
NAMESPACED_RESOURCES: tuple[Resource, ...] = (
    DEPLOYMENTS,
    REPLICASETS,
    PODS,
    SERVICES,
    CONFIGMAPS,
    SECRETS,
    SERVICEACCOUNTS,
    LEASES,
    EVENTS,
)


class NamespaceController(Controller[str]):
    """Deletes the contents of terminating namespaces, then finalizes them."""

    name = "namespace-controller"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
        resources: Iterable[Resource] = NAMESPACED_RESOURCES,
        max_delay: float = 5.0,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.resources = list(resources)
        self.max_delay = max_delay
        self.namespaces = informers(NAMESPACES)
        self.namespaces.on_event(self._on_namespace)
        self._passes: dict[str, int] = {}  # namespace -> passes that left content behind

    def keys(self) -> Iterable[str]:
        return [meta(ns)["name"] for ns in self.namespaces.items() if being_deleted(ns)]

    async def _on_namespace(
        self, etype: str, ns: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if etype == "DELETED":
            self._passes.pop(meta(ns)["name"], None)
        elif being_deleted(ns):
            self.enqueue(meta(ns)["name"])

    async def reconcile(self, key: str) -> float | None:
        ns = self.namespaces.get(key)
        if ns is None or not being_deleted(ns):
            return None
        if FINALIZER not in ((ns.get("spec") or {}).get("finalizers") or []):
            return None  # ours is done; other finalizers belong to someone else
        resources = [*self.resources, *await self._custom_resources()]
        await self._delete_contents(key, resources)
        remaining = await self._remaining(key, resources)
        if remaining:
            # Objects with finalizers take their time: look again, less and less often.
            passes = self._passes.get(key, 0)
            self._passes[key] = passes + 1
            log.debug("namespace %s: waiting for %s", key, ", ".join(remaining))
            return float(min(0.05 * 2**passes, self.max_delay))
        self._passes.pop(key, None)
        body = copy.deepcopy(ns)
        body["spec"]["finalizers"] = [f for f in body["spec"]["finalizers"] if f != FINALIZER]
        with contextlib.suppress(NotFoundError):
            await self.client.replace(NAMESPACES, body, subresource="finalize")
        return None

    async def _custom_resources(self) -> list[Resource]:
        listed = await self.client.list(CRDS)
        found = (crd_resource(crd) for crd in listed.get("items") or [])
        return [res for res in found if res is not None and res.namespaced]

    async def _delete_contents(self, namespace: str, resources: list[Resource]) -> None:
        for res in resources:
            items = await self._list(res, namespace)
            await asyncio.gather(
                *(self._delete(res, obj) for obj in items if not being_deleted(obj))
            )

    async def _delete(self, res: Resource, obj: dict[str, Any]) -> None:
        m = meta(obj)
        # Gone already, or a namesake the next pass will see: neither is a failure.
        with contextlib.suppress(NotFoundError, ConflictError):
            await self.client.delete(
                res, m["name"], m["namespace"], preconditions={"uid": m["uid"]}
            )

    async def _remaining(self, namespace: str, resources: list[Resource]) -> list[str]:
        counts = [(res, len(await self._list(res, namespace))) for res in resources]
        return [f"{n} {res.plural}" for res, n in counts if n]

    async def _list(self, res: Resource, namespace: str) -> list[dict[str, Any]]:
        try:
            listed = await self.client.list(res, namespace)
        except NotFoundError:
            return []  # no longer served (a CRD just deleted): nothing of it is left
        return list(listed.get("items") or [])


class ServiceAccountController(Controller[str]):
    """Every live namespace has a ``default`` ServiceAccount (recreated if deleted)."""

    name = "serviceaccount-controller"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.namespaces = informers(NAMESPACES)
        self.serviceaccounts = informers(SERVICEACCOUNTS)
        self.namespaces.on_event(self._on_namespace)
        self.serviceaccounts.on_event(self._on_serviceaccount)

    def keys(self) -> Iterable[str]:
        return [meta(ns)["name"] for ns in self.namespaces.items()]

    async def _on_namespace(
        self, etype: str, ns: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if etype != "DELETED" and not being_deleted(ns):
            self.enqueue(meta(ns)["name"])

    async def _on_serviceaccount(
        self, etype: str, sa: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if etype == "DELETED" and meta(sa).get("name") == DEFAULT_SERVICEACCOUNT:
            self.enqueue(meta(sa).get("namespace", ""))

    async def reconcile(self, key: str) -> float | None:
        ns = self.namespaces.get(key)
        if ns is None or being_deleted(ns):
            return None
        if self.serviceaccounts.get(DEFAULT_SERVICEACCOUNT, key) is not None:
            return None
        sa = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": DEFAULT_SERVICEACCOUNT, "namespace": key},
        }
        try:
            await self.client.create(SERVICEACCOUNTS, sa, key)
        except (ConflictError, NotFoundError):
            pass  # already there (the cache lags), or the namespace is gone
        except ClientError as exc:
            if exc.status != 403:  # 403: the namespace started terminating meanwhile
                raise
        return None
