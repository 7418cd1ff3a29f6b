"""The ReplicaSet controller: keeps ``spec.replicas`` pods for every replica set.

Pods are made from the template (``generateName: <rs>-``, the template's labels, a controller
reference to the replica set); extra pods go, the least useful first; orphans the selector
matches are adopted and owned pods that stopped matching are released. Creations and
deletions the pod cache has not seen yet are remembered by name (client-go's expectations),
so a lagging cache never makes the controller create or delete twice.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

from ..client import PODS, REPLICASETS, Client, ClientError, Informer, NotFoundError
from .controlling import (
    Controller,
    Informers,
    being_deleted,
    claim,
    meta,
    now_rfc3339,
    owner_keys,
    owner_reference,
    parse_time,
    selector_matches,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)

# How long a creation or deletion the cache has not reported is still counted (the cache lags
# by milliseconds; a minute covers a relisting informer).
EXPECTATION_TTL = 60.0
BURST = 500  # at most this many pods created or deleted per pass, as kube's burstReplicas
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def is_active(pod: dict[str, Any]) -> bool:
    """Counts toward replicas: not finished and not being deleted."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not being_deleted(pod)


def ready_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond if cond.get("status") == "True" else None
    return None


def available_in(pod: dict[str, Any], min_ready: int, now: float) -> float | None:
    """Seconds until a pod counts as available: 0 if it is, None if it is not even ready."""
    cond = ready_condition(pod)
    if cond is None:
        return None
    if min_ready <= 0:
        return 0.0
    return max(0.0, parse_time(cond.get("lastTransitionTime")) + min_ready - now)


def _deletion_rank(pod: dict[str, Any]) -> tuple[Any, ...]:
    """Pods to delete first sort first: unscheduled, pending, not ready, ready the shortest,
    restarted the most, newest (kube's ActivePods order)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    ready = ready_condition(pod)
    restarts = sum(int(c.get("restartCount") or 0) for c in status.get("containerStatuses") or [])
    return (
        1 if spec.get("nodeName") else 0,
        _PHASE_RANK.get(status.get("phase", ""), 0),
        0 if ready is None else 1,
        0.0 if ready is None else -parse_time(ready.get("lastTransitionTime")),
        -restarts,
        -parse_time(meta(pod).get("creationTimestamp")),
        meta(pod).get("name", ""),
    )


class ReplicaSetController(Controller[Key]):
    name = "replicaset-controller"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.replicasets: Informer = informers(REPLICASETS)
        self.pods: Informer = informers(PODS)
        self.pod_index = informers.index(PODS)
        self.rs_index = informers.index(REPLICASETS)
        self.replicasets.on_event(self._on_replicaset)
        self.pods.on_event(self._on_pod)
        # Per replica set: pod name -> loop time after which the expectation lapses.
        self._creating: dict[Key, dict[str, float]] = {}
        self._deleting: dict[Key, dict[str, float]] = {}

    def keys(self) -> Iterable[Key]:
        return [_key(rs) for rs in self.replicasets.items()]

    async def _on_replicaset(
        self, etype: str, rs: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        self.enqueue(_key(rs))

    async def _on_pod(self, etype: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        for key in owner_keys(REPLICASETS, self.rs_index, etype, pod, old):
            self.enqueue(key)

    async def reconcile(self, key: Key) -> float | None:
        ns, name = key
        rs = self.replicasets.get(name, ns)
        if rs is None:
            self._creating.pop(key, None)
            self._deleting.pop(key, None)
            return None
        try:
            return await self._sync(key, rs)
        except NotFoundError:
            try:  # gone meanwhile (the cache lags)? then there is nothing left to do
                await self.client.get(REPLICASETS, name, ns)
            except NotFoundError:
                return None
            raise

    async def _sync(self, key: Key, rs: dict[str, Any]) -> float | None:
        ns = key[0]
        spec = rs.get("spec") or {}
        selector = spec.get("selector")
        # Expectations first, then the snapshot, with no await between: a pod the cache shows
        # meanwhile is then counted once, as expected or as seen.
        creating, deleting = self._expectations(key)
        active = [p for p in self.pod_index.items(ns) if is_active(p)]
        owned = await claim(
            self.client,
            PODS,
            rs,
            REPLICASETS,
            active,
            lambda p: selector_matches(selector, meta(p).get("labels")),
        )
        live = [p for p in owned if meta(p)["name"] not in deleting]
        wanted = int(spec.get("replicas", 1))
        failure: str | None = None
        after: float | None = None
        if not being_deleted(rs):
            diff = len(live) + len(creating) - wanted
            try:
                if diff < 0:
                    await self._create(rs, min(-diff, BURST), creating)
                elif diff > 0:
                    await self._delete(live, min(diff, BURST), deleting)
            except ClientError as exc:
                failure = f"{'create' if diff < 0 else 'delete'}: {exc.message}"
                if exc.status != 403:
                    await self._write_status(rs, owned, failure)
                    raise
                # Forbidden (e.g. the namespace is terminating): retrying soon is pointless.
                after = 5.0
        wait = await self._write_status(rs, owned, failure)
        if wait is not None:
            after = wait if after is None else min(after, wait)
        return after

    def _expectations(self, key: Key) -> tuple[dict[str, float], dict[str, float]]:
        """Drop expectations the cache has met (or that lapsed); what is left is in flight."""
        ns = key[0]
        now = asyncio.get_running_loop().time()
        creating = self._creating.setdefault(key, {})
        for pod_name, until in list(creating.items()):
            if until < now or self.pods.get(pod_name, ns) is not None:
                del creating[pod_name]
        deleting = self._deleting.setdefault(key, {})
        for pod_name, until in list(deleting.items()):
            pod = self.pods.get(pod_name, ns)
            if until < now or pod is None or not is_active(pod):
                del deleting[pod_name]
        return creating, deleting

    async def _create(self, rs: dict[str, Any], count: int, creating: dict[str, float]) -> None:
        m = meta(rs)
        template = (rs.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        pod_meta: dict[str, Any] = {
            "generateName": f"{m['name']}-",
            "namespace": m["namespace"],
            "labels": dict(tmeta.get("labels") or {}),
            "ownerReferences": [owner_reference(rs, REPLICASETS)],
        }
        for field in ("annotations", "finalizers"):
            if tmeta.get(field):
                pod_meta[field] = copy.deepcopy(tmeta[field])
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta}
        body["spec"] = copy.deepcopy(template.get("spec") or {})
        # Slow start (kube's slowStartBatch): batches of 1, 2, 4...; a failing template costs
        # one refused request, not ``count``.
        batch, done = 1, 0
        while done < count:
            size = min(batch, count - done)
            results = await _gather(
                [self.client.create(PODS, copy.deepcopy(body), m["namespace"]) for _ in range(size)]
            )
            until = asyncio.get_running_loop().time() + EXPECTATION_TTL
            errors = [r for r in results if isinstance(r, BaseException)]
            for result in results:
                if isinstance(result, dict):
                    creating[meta(result)["name"]] = until
            if errors:
                raise errors[0]
            done += size
            batch *= 2

    async def _delete(
        self, live: list[dict[str, Any]], count: int, deleting: dict[str, float]
    ) -> None:
        victims = sorted(live, key=_deletion_rank)[:count]
        until = asyncio.get_running_loop().time() + EXPECTATION_TTL
        for pod in victims:
            deleting[meta(pod)["name"]] = until
        results = await _gather(
            [
                self.client.delete(
                    PODS,
                    meta(pod)["name"],
                    meta(pod)["namespace"],
                    preconditions={"uid": meta(pod)["uid"]},
                )
                for pod in victims
            ]
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for pod, result in zip(victims, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, NotFoundError):
                deleting.pop(meta(pod)["name"], None)  # not deleted: count it again
        errors = [e for e in errors if not isinstance(e, NotFoundError)]
        if errors:
            raise errors[0]

    async def _write_status(
        self, rs: dict[str, Any], pods: list[dict[str, Any]], failure: str | None
    ) -> float | None:
        """Write the status if it changed; seconds until a ready pod becomes available."""
        spec = rs.get("spec") or {}
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        now = time.time()
        ready = available = labeled = 0
        wait: float | None = None
        for pod in pods:
            labels = meta(pod).get("labels") or {}
            if all(labels.get(k) == v for k, v in template_labels.items()):
                labeled += 1
            remaining = available_in(pod, min_ready, now)
            if remaining is None:
                continue
            ready += 1
            if remaining <= 0:
                available += 1
            else:
                wait = remaining if wait is None else min(wait, remaining)
        old = rs.get("status") or {}
        conditions = [c for c in old.get("conditions") or [] if c.get("type") != "ReplicaFailure"]
        if failure is not None:
            previous: dict[str, Any] = next(
                (c for c in old.get("conditions") or [] if c.get("type") == "ReplicaFailure"), {}
            )
            reason = "FailedCreate" if failure.startswith("create") else "FailedDelete"
            if previous.get("reason") == reason and previous.get("message") == failure:
                conditions.append(previous)
            else:
                conditions.append(
                    {
                        "type": "ReplicaFailure",
                        "status": "True",
                        "reason": reason,
                        "message": failure,
                        "lastTransitionTime": now_rfc3339(),
                    }
                )
        status: dict[str, Any] = {
            "replicas": len(pods),
            "fullyLabeledReplicas": labeled,
            "readyReplicas": ready,
            "availableReplicas": available,
            "observedGeneration": meta(rs).get("generation", 0),
            "conditions": conditions or None,
        }
        if any(old.get(k) != v for k, v in status.items()):
            m = meta(rs)
            await self.client.patch(
                REPLICASETS, m["name"], {"status": status}, m["namespace"], subresource="status"
            )
        return None if wait is None else wait + 0.1


def _key(obj: dict[str, Any]) -> Key:
    return (meta(obj).get("namespace", ""), meta(obj).get("name", ""))


async def _gather(calls: list[Awaitable[dict[str, Any]]]) -> list[dict[str, Any] | Exception]:
    """All calls' results or exceptions; cancellation still propagates."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
    return results  # type: ignore[return-value]
