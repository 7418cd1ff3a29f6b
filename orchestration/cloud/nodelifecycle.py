"""The node lifecycle controller: kube-controller-manager's node health monitor, with
KubeEdge's edge autonomy.

A node reports by renewing its Lease ``kube-node-lease/<node>`` (``spec.renewTime``) or by
posting a Ready condition with a newer ``lastHeartbeatTime`` (or a new Ready status). As
kube does, the controller times those reports with its own clock when it *sees* them, not
with the timestamps inside (edge clocks drift), and gives every node a full grace period
from the moment it first sees it (so a restarted cloud does not condemn its nodes).

A node silent for ``grace_period`` seconds gets its Ready, MemoryPressure, DiskPressure and
PIDPressure conditions set to Unknown (``NodeStatusUnknown``; ``NodeStatusNeverUpdated``
for a node that never posted one) and the taints ``node.kubernetes.io/unreachable``
(``node.kubernetes.io/not-ready`` if it never posted Ready) with effects NoSchedule and
NoExecute. A node that reports again loses them; a node reporting Ready=False carries
not-ready, as in kube. Only those two taint keys are ever touched.

Edge autonomy: pods on a silent node keep running there (the edge runs them on its own), so
they are neither evicted nor deleted; their Ready condition is set to False (reason
``NodeNotReady``) so that Services and users stop trusting them. The node's next pod
reports restore it. A pod annotated ``orbiter.io/evict-when-unreachable: "true"`` opts out
of autonomy: it is deleted ``eviction_timeout`` seconds after its node went silent (kube's
default ``tolerationSeconds`` of the unreachable NoExecute toleration is 300 s), so its
controller can recreate it elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..client import LEASES, NODES, PODS, Client, Informer, NotFoundError
from .controlling import Controller, Informers, being_deleted, meta, now_rfc3339
from .placement import NOT_READY, UNREACHABLE

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
EVICT_ANNOTATION = "orbiter.io/evict-when-unreachable"
GRACE_PERIOD = 40.0  # kube's node-monitor-grace-period = KubeEdge's nodeLeaseDurationSeconds
EVICTION_TIMEOUT = 300.0

CONDITION_TYPES = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
EFFECTS = ("NoSchedule", "NoExecute")
UNKNOWN = ("NodeStatusUnknown", "Kubelet stopped posting node status.")
NEVER_UPDATED = ("NodeStatusNeverUpdated", "Kubelet never posted node status.")

PodKey = tuple[str, str]  # (namespace, name)


@dataclass
class _Probe:
    """The last report seen from a node and when (controller clock)."""

    lease: Any  # spec.renewTime
    heartbeat: Any  # Ready's lastHeartbeatTime
    ready: str  # Ready's status ("" when absent)
    at: float
    reported: bool  # seen a report since the controller started, not just the node


class NodeLifecycleController(Controller[str]):
    """Keys are node names. ``clock`` returns seconds (monotonic by default); ``reconcile``
    returns the seconds until the node's next deadline, so no periodic sweep is needed."""

    name = "node-lifecycle-controller"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
        grace_period: float = GRACE_PERIOD,
        eviction_timeout: float = EVICTION_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.grace_period = grace_period
        self.eviction_timeout = eviction_timeout
        self.clock = clock
        self.nodes: Informer = informers(NODES)
        self.leases: Informer = informers(LEASES)
        self.pods: Informer = informers(PODS)
        self.nodes.on_event(self._on_node)
        self.leases.on_event(self._on_lease)
        self.pods.on_event(self._on_pod)
        self._probes: dict[str, _Probe] = {}
        self._pods: dict[str, set[PodKey]] = {}  # node -> pods bound to it
        self._bound: dict[PodKey, str] = {}

    def keys(self) -> Iterable[str]:
        return [meta(n).get("name", "") for n in self.nodes.items()]

    # --- observing reports -----------------------------------------------------------------

    async def _on_node(self, etype: str, node: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = meta(node).get("name", "")
        if etype == "DELETED":
            self._probes.pop(name, None)
        else:
            self._observe(name, node=node)
        self.enqueue(name)

    async def _on_lease(
        self, etype: str, lease: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if meta(lease).get("namespace") != LEASE_NAMESPACE or etype == "DELETED":
            return
        name = meta(lease).get("name", "")
        if name in self._probes or self.nodes.get(name) is not None:
            self._observe(name, lease=lease)
            self.enqueue(name)

    async def _on_pod(self, etype: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        key = (meta(pod).get("namespace", ""), meta(pod).get("name", ""))
        node = (pod.get("spec") or {}).get("nodeName") or ""
        was = self._bound.pop(key, None)
        if was is not None:
            self._pods[was].discard(key)
            if not self._pods[was]:
                del self._pods[was]
        if etype != "DELETED" and node:
            self._bound[key] = node
            self._pods.setdefault(node, set()).add(key)
            if self._silent(node):
                self.enqueue(node)  # bound to (or changed on) a silent node: mark it

    def _observe(
        self, name: str, *, node: dict[str, Any] | None = None, lease: dict[str, Any] | None = None
    ) -> None:
        node = node if node is not None else self.nodes.get(name)
        lease = lease if lease is not None else self.leases.get(name, LEASE_NAMESPACE)
        ready = _condition(node or {}, "Ready")
        renew = ((lease or {}).get("spec") or {}).get("renewTime")
        heartbeat, status = ready.get("lastHeartbeatTime"), str(ready.get("status") or "")
        now = self.clock()
        probe = self._probes.get(name)
        if probe is None:
            self._probes[name] = _Probe(renew, heartbeat, status, now, reported=False)
            return
        # Our own Unknown write is no report; a new status from the node is.
        reported = (
            renew != probe.lease
            or heartbeat != probe.heartbeat
            or (status != probe.ready and status not in ("Unknown", ""))
        )
        probe.lease, probe.heartbeat, probe.ready = renew, heartbeat, status
        if reported:
            probe.at, probe.reported = now, True

    def _silent(self, name: str) -> bool:
        probe = self._probes.get(name)
        return probe is not None and self.clock() - probe.at >= self.grace_period

    # --- reconciling one node --------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        node = self.nodes.get(key)
        if node is None:
            self._probes.pop(key, None)
            return None
        if key not in self._probes:
            self._observe(key, node=node)
        probe = self._probes[key]
        now = self.clock()
        silent_since = probe.at + self.grace_period
        ready = _condition(node, "Ready")
        never = not ready or ready.get("reason") == NEVER_UPDATED[0]
        if now < silent_since:
            status = ready.get("status")
            if status == "False":
                wanted = NOT_READY
            elif status == "Unknown" and not probe.reported and not never:
                wanted = UNREACHABLE  # marked before we started: wait for a real report
            else:
                wanted = None
            await self._taint(node, wanted)
            return silent_since - now
        node = await self._mark_unknown(node) or node
        await self._taint(node, NOT_READY if never else UNREACHABLE)
        return await self._handle_pods(key, silent_since, now)

    async def _mark_unknown(self, node: dict[str, Any]) -> dict[str, Any] | None:
        conditions = list((node.get("status") or {}).get("conditions") or [])
        stamp, changed = now_rfc3339(), False
        for kind in CONDITION_TYPES:
            current = next((c for c in conditions if c.get("type") == kind), None)
            if current is None:
                reason, message = NEVER_UPDATED
                created = meta(node).get("creationTimestamp") or stamp
                conditions.append(
                    {
                        "type": kind,
                        "status": "Unknown",
                        "reason": reason,
                        "message": message,
                        "lastHeartbeatTime": created,
                        "lastTransitionTime": stamp,
                    }
                )
                changed = True
            elif current.get("status") != "Unknown":
                reason, message = UNKNOWN
                # lastHeartbeatTime stays: it says when the node last spoke.
                current.update(status="Unknown", reason=reason, message=message)
                current["lastTransitionTime"] = stamp
                changed = True
        if not changed:
            return None
        m = meta(node)
        log.info("node %s stopped reporting: status Unknown", m["name"])
        # The precondition keeps a report that raced us: a conflict retries from the cache.
        body = {"metadata": {"resourceVersion": m["resourceVersion"]}}
        body["status"] = {"conditions": conditions}
        return await self.client.patch(NODES, m["name"], body, subresource="status")

    async def _taint(self, node: dict[str, Any], wanted: str | None) -> None:
        m = meta(node)
        taints: list[dict[str, Any]] = list((node.get("spec") or {}).get("taints") or [])
        ours = [t for t in taints if t.get("key") in (NOT_READY, UNREACHABLE)]
        if sorted((t.get("key"), t.get("effect")) for t in ours) == [
            (wanted, e) for e in EFFECTS if wanted
        ]:
            return
        kept = [t for t in taints if t.get("key") not in (NOT_READY, UNREACHABLE)]
        if wanted:
            kept.append({"key": wanted, "effect": "NoSchedule"})
            kept.append({"key": wanted, "effect": "NoExecute", "timeAdded": now_rfc3339()})
        log.info("node %s: taints %s", m["name"], wanted or "cleared")
        body = {"metadata": {"resourceVersion": m["resourceVersion"]}, "spec": {"taints": kept}}
        await self.client.patch(NODES, m["name"], body)

    async def _handle_pods(self, node: str, silent_since: float, now: float) -> float | None:
        """Mark the silent node's pods not Ready; delete those that opted out of autonomy
        once their time is up. The seconds until the next such deletion, if any."""
        evict_at = silent_since + self.eviction_timeout
        wait: float | None = None
        for ns, name in sorted(self._pods.get(node, ())):
            pod = self.pods.get(name, ns)
            if pod is None or being_deleted(pod):
                continue
            if (meta(pod).get("annotations") or {}).get(EVICT_ANNOTATION) == "true":
                if now < evict_at:
                    wait = evict_at - now
                else:
                    await self._evict(pod)
                    continue
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                await self._mark_not_ready(pod)
        return wait

    async def _evict(self, pod: dict[str, Any]) -> None:
        m = meta(pod)
        log.info("evicting %s/%s from its unreachable node", m["namespace"], m["name"])
        with contextlib.suppress(NotFoundError):
            await self.client.delete(
                PODS, m["name"], m["namespace"], preconditions={"uid": m.get("uid", "")}
            )

    async def _mark_not_ready(self, pod: dict[str, Any]) -> None:
        if _condition(pod, "Ready").get("status") == "False":
            return
        m = meta(pod)
        condition = {
            "type": "Ready",
            "status": "False",
            "reason": "NodeNotReady",
            "message": "Node is not reporting; the pod may still run there.",
            "lastTransitionTime": now_rfc3339(),
        }
        # Strategic merge: conditions merge by type, the node's others stay.
        with contextlib.suppress(NotFoundError):
            await self.client.patch(
                PODS,
                m["name"],
                {"status": {"conditions": [condition]}},
                m["namespace"],
                patch_type="strategic",
                subresource="status",
            )


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}
