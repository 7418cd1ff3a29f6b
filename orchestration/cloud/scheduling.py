"""The scheduler: binds every pending pod to a node, as kube-scheduler's default profile does.

A pod is ours when it has no ``spec.nodeName``, its ``schedulerName`` is ours (or unset) and
it is neither finished, being deleted nor gated. Nodes that are cordoned, carry a taint the
pod does not tolerate (a node that is not Ready counts as tainted not-ready), miss its node
selector or required affinity, or lack room for its requests are filtered out; the rest are
ranked (``placement.rank``) and the pod bound to the best through ``pods/{name}/binding``.

A pod that fits nowhere stays Pending with ``PodScheduled=False`` (reason Unschedulable)
and a ``FailedScheduling`` event; it is retried when a node appears or changes, when a pod
frees capacity, and otherwise with back-off. What each node's pods request is kept from the
pod informer's events, plus the pods this scheduler bound that the cache does not show yet
(kube's assumed pods), so pods scheduled back to back never share the last free slot.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..client import (
    EVENTS,
    NODES,
    PODS,
    Client,
    ClientError,
    ConflictError,
    Informer,
    NotFoundError,
)
from .controlling import Controller, Informers, being_deleted, meta, now_rfc3339
from .placement import Usage, allocatable, failure_message, is_ready, misfits, pod_usage, rank

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a pod

SCHEDULER_NAME = "default-scheduler"


@dataclass
class _Placed:
    """A pod's share of a node: seen bound in the cache, or assumed after our binding."""

    node: str
    usage: Usage
    uid: str
    assumed: bool


class Scheduler(Controller[Key]):
    """``backoff``: (first, longest) delay in seconds before an unschedulable pod is tried
    again when nothing it could be waiting for has changed."""

    name = SCHEDULER_NAME

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
        scheduler_name: str = SCHEDULER_NAME,
        backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.scheduler_name = scheduler_name
        self.backoff = backoff
        self.pods: Informer = informers(PODS)
        self.nodes: Informer = informers(NODES)
        self.pods.on_event(self._on_pod)
        self.nodes.on_event(self._on_node)
        self._placed: dict[Key, _Placed] = {}
        self._used: dict[str, Usage] = {}  # node -> what its placed pods request together
        self._unschedulable: dict[Key, int] = {}  # pod -> failed attempts in a row
        self._events: dict[Key, dict[str, int]] = {}  # pod -> event name -> count

    def keys(self) -> Iterable[Key]:
        return [_key(p) for p in self.pods.items() if self._pending(p)]

    def _pending(self, pod: dict[str, Any]) -> bool:
        spec = pod.get("spec") or {}
        return (
            not spec.get("nodeName")
            and (spec.get("schedulerName") or SCHEDULER_NAME) == self.scheduler_name
            and not being_deleted(pod)
            and not _finished(pod)
            and not spec.get("schedulingGates")
        )

    # --- bookkeeping from the informers ------------------------------------------------------

    async def _on_pod(self, etype: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        key, uid = _key(pod), meta(pod).get("uid", "")
        node = (pod.get("spec") or {}).get("nodeName")
        live = etype != "DELETED"
        placed = self._placed.get(key)
        if live and node and not _finished(pod):
            self._place(key, node, _usage_of(pod), uid, assumed=False)
        elif placed is not None and not (live and placed.assumed and placed.uid == uid):
            self._unplace(key)  # deleted, finished or replaced: its room is free again
            self._retry_unschedulable()
        if live and self._pending(pod):
            if old is None or not self._pending(old) or old.get("spec") != pod.get("spec"):
                self.enqueue(key)  # new, or changed in what decides where it may go
        else:  # bound, finished, deleted or not ours: nothing more to retry or report
            self._unschedulable.pop(key, None)
            self._events.pop(key, None)

    async def _on_node(self, etype: str, node: dict[str, Any], old: dict[str, Any] | None) -> None:
        # Heartbeats change nodes all the time; only what filters or scores matters.
        if etype == "ADDED" or (etype == "MODIFIED" and _node_view(node) != _node_view(old)):
            self._retry_unschedulable()

    def _retry_unschedulable(self) -> None:
        for key in list(self._unschedulable):
            self.enqueue(key)

    def _place(self, key: Key, node: str, usage: Usage, uid: str, *, assumed: bool) -> None:
        self._unplace(key)
        self._placed[key] = _Placed(node, usage, uid, assumed)
        self._used.setdefault(node, Usage()).add(usage)

    def _unplace(self, key: Key) -> None:
        placed = self._placed.pop(key, None)
        if placed is not None:
            used = self._used[placed.node]
            used.add(placed.usage, -1)
            if used.pods <= 0:
                del self._used[placed.node]

    # --- one scheduling attempt --------------------------------------------------------------

    async def reconcile(self, key: Key) -> float | None:
        ns, name = key
        pod = self.pods.get(name, ns)
        if pod is None or not self._pending(pod):
            self._unschedulable.pop(key, None)
            return None
        uid = meta(pod).get("uid", "")
        placed = self._placed.get(key)
        if placed is not None and placed.uid == uid:
            return None  # bound by us; the cache has yet to show it
        try:
            usage = pod_usage(pod)
        except ValueError as exc:
            return await self._fail(key, pod, f"invalid resource requests: {exc}")
        nodes = sorted(self.nodes.items(), key=lambda n: str(meta(n).get("name", "")))
        reasons: collections.Counter[str] = collections.Counter()
        feasible: list[tuple[dict[str, Any], Usage]] = []
        for node in nodes:
            used = self._used.get(meta(node)["name"]) or Usage()
            why = misfits(pod, usage, node, used)
            reasons.update(why)
            if not why:
                feasible.append((node, used))
        if not feasible:
            return await self._fail(key, pod, failure_message(len(nodes), reasons))
        target = rank(pod, usage, feasible)[0][1]
        # Claimed before the first await: a pod placed meanwhile already sees this one.
        self._place(key, target, usage, uid, assumed=True)
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": target},
        }
        try:
            await self.client.create(PODS, binding, ns, subresource="binding")
        except BaseException as exc:
            placed = self._placed.get(key)
            if placed is not None and placed.assumed:
                self._unplace(key)
                self._retry_unschedulable()
            if isinstance(exc, NotFoundError):
                return None  # deleted meanwhile
            raise  # e.g. 409 bound or deleted meanwhile: retried once the cache catches up
        log.debug("bound %s/%s to %s", ns, name, target)
        self._unschedulable.pop(key, None)
        self._events.pop(key, None)
        await self._record(
            pod, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {target}"
        )
        self._events.pop(key, None)
        return None

    async def _fail(self, key: Key, pod: dict[str, Any], message: str) -> float:
        attempts = self._unschedulable.get(key, 0)
        self._unschedulable[key] = attempts + 1  # before any await: node events now retry it
        await self._mark_unschedulable(pod, message)
        await self._record(pod, "Warning", "FailedScheduling", message)
        first, longest = self.backoff
        return float(min(first * 2**attempts, longest))

    async def _mark_unschedulable(self, pod: dict[str, Any], message: str) -> None:
        conditions = (pod.get("status") or {}).get("conditions") or []
        current: dict[str, Any] = next(
            (c for c in conditions if c.get("type") == "PodScheduled"), {}
        )
        if (current.get("status"), current.get("reason"), current.get("message")) == (
            "False",
            "Unschedulable",
            message,
        ):
            return
        since = current.get("lastTransitionTime") if current.get("status") == "False" else None
        condition = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastTransitionTime": since or now_rfc3339(),
        }
        m = meta(pod)
        # Strategic merge: conditions merge by type, so the kubelet's stay untouched.
        with contextlib.suppress(NotFoundError):
            await self.client.patch(
                PODS,
                m["name"],
                {"status": {"conditions": [condition]}},
                m["namespace"],
                patch_type="strategic",
                subresource="status",
            )

    async def _record(self, pod: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """A core v1 Event about ``pod``; the same one again increments its ``count``."""
        m = meta(pod)
        ns, pod_name, uid = m["namespace"], m["name"], m.get("uid", "")
        digest = hashlib.sha256(f"{uid}\0{kind}\0{reason}\0{message}".encode()).hexdigest()
        name = f"{pod_name[:236]}.{digest[:16]}"  # one name per distinct event, as a DNS name
        counts = self._events.setdefault(_key(pod), {})
        now = now_rfc3339()
        try:
            if name in counts:
                try:
                    await self._bump(name, ns, counts[name] + 1, now)
                    counts[name] += 1
                    return
                except NotFoundError:
                    pass  # deleted (events expire): start again
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod_name,
                    "namespace": ns,
                    "uid": uid,
                    "resourceVersion": m.get("resourceVersion", ""),
                },
                "reason": reason,
                "message": message,
                "type": kind,
                "source": {"component": self.scheduler_name},
                "reportingComponent": self.scheduler_name,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            try:
                await self.client.create(EVENTS, event, ns)
                counts[name] = 1
            except ConflictError:  # recorded before this process started
                existing = await self.client.get(EVENTS, name, ns)
                counts[name] = int(existing.get("count") or 1) + 1
                await self._bump(name, ns, counts[name], now)
        except ClientError as exc:
            # Events are advice: a terminating namespace refuses them, scheduling goes on.
            log.debug("event %s on pod %s/%s not recorded: %s", reason, ns, pod_name, exc)

    async def _bump(self, name: str, namespace: str, count: int, now: str) -> None:
        await self.client.patch(EVENTS, name, {"count": count, "lastTimestamp": now}, namespace)


def _key(pod: dict[str, Any]) -> Key:
    return (meta(pod).get("namespace", ""), meta(pod).get("name", ""))


def _finished(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _usage_of(pod: dict[str, Any]) -> Usage:
    """A bound pod's requests; an unreadable quantity there (not ours to refuse) counts as
    nothing but the pod itself."""
    try:
        return pod_usage(pod)
    except ValueError:
        return Usage(pods=1)


def _node_view(node: dict[str, Any] | None) -> tuple[Any, ...]:
    """What of a node decides placement."""
    if node is None:
        return ()
    spec = node.get("spec") or {}
    return (
        meta(node).get("labels"),
        spec.get("taints"),
        bool(spec.get("unschedulable")),
        allocatable(node),
        is_ready(node),
    )
