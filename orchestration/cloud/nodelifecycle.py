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

Planned offline: a node annotated ``orbiter.io/contact-windows`` (a JSON list of
``[startUnix, endUnix]``, written by whoever knows its contact plan) is reachable only in
those windows. Silent between them, it is expected to be: it gets the condition
``ExpectedOffline=True`` (reason ``BetweenContacts``, message "next contact window <start>
(in N min)"), no taints, and its Ready condition and pods stay as they are; opted-out pods are
not evicted. Once a window starts, the node has ``orbiter.io/contact-acquisition-seconds``
(default 0) plus ``grace_period`` to report (``AwaitingContact`` until then); a window that
passes that deadline without a report is missed, and the node goes Unknown and tainted as
above, the message naming the window, with eviction counted from that deadline. A node that
reports gets ``ExpectedOffline=False`` (reason ``Reporting``; the condition is kept, not
removed, so its last transition stays visible). Windows are Unix seconds, so they are
timed on ``wallclock``; reports on ``clock``. A malformed annotation, or one with no window
left to come, leaves the node to the usual rules.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..client import LEASES, NODES, PODS, Client, Informer, NotFoundError
from .controlling import Controller, Informers, being_deleted, meta, now_rfc3339
from .placement import NOT_READY, UNREACHABLE

log = logging.getLogger(__name__)

LEASE_NAMESPACE = "kube-node-lease"
EVICT_ANNOTATION = "orbiter.io/evict-when-unreachable"
WINDOWS_ANNOTATION = "orbiter.io/contact-windows"
ACQUISITION_ANNOTATION = "orbiter.io/contact-acquisition-seconds"
EXPECTED_OFFLINE = "ExpectedOffline"
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
    wall: float  # ``at`` on the wall clock, which contact windows are given in
    reported: bool  # seen a report since the controller started, not just the node
    # A window missed since the last report. The plan's writer drops ended windows from
    # the annotation, so the miss is remembered here, or it would be forgotten with them.
    missed: tuple[float, float] | None = None


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
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.grace_period = grace_period
        self.eviction_timeout = eviction_timeout
        self.clock = clock
        self.wallclock = wallclock
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
        now, wall = self.clock(), self.wallclock()
        probe = self._probes.get(name)
        if probe is None:
            self._probes[name] = _Probe(renew, heartbeat, status, now, wall, reported=False)
            return
        # Our own Unknown write is no report; a new status from the node is.
        reported = (
            renew != probe.lease
            or heartbeat != probe.heartbeat
            or (status != probe.ready and status not in ("Unknown", ""))
        )
        probe.lease, probe.heartbeat, probe.ready = renew, heartbeat, status
        if reported:
            probe.at, probe.wall, probe.reported = now, wall, True

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
        plan = _contact_plan(node)
        if plan is not None:
            return await self._reconcile_planned(node, probe, plan, now, silent_since)
        # Annotation gone: a stale ExpectedOffline=True must not outlive it.
        no_plan = "no contact windows annotated"
        node = await self._set_expected_offline(node, "False", "NoContactPlan", no_plan) or node
        if now < silent_since:
            await self._taint(node, _reporting_taint(ready, probe.reported, never))
            return silent_since - now
        return await self._silent_node(node, silent_since, now, None)

    async def _reconcile_planned(
        self,
        node: dict[str, Any],
        probe: _Probe,
        plan: tuple[list[tuple[float, float]], float],
        now: float,
        silent_since: float,
    ) -> float | None:
        """A node reachable only in windows: silent between them is expected; a window
        whose report deadline passes without a report makes it Unknown as usual."""
        windows, acquisition = plan
        wall = self.wallclock()
        allowance = acquisition + self.grace_period
        ready = _condition(node, "Ready")
        never = not ready or ready.get("reason") == NEVER_UPDATED[0]
        if now < silent_since:  # reporting: the plain rules, and the plan says so
            reporting = "node is reporting"
            node = await self._set_expected_offline(node, "False", "Reporting", reporting) or node
            await self._taint(node, _reporting_taint(ready, probe.reported, never))
            return silent_since - now
        # Windows that started after the last report: missed once their deadline has passed;
        # one that started before it brought its contact already.
        after = [w for w in windows if w[0] > probe.wall]
        if probe.missed is not None and probe.missed[0] > probe.wall and probe.missed not in after:
            after = sorted([probe.missed, *after])
        missed = [w for w in after if w[0] + allowance <= wall]
        probe.missed = missed[-1] if missed else None
        upcoming = [w for w in after if w[0] + allowance > wall]
        if not missed and upcoming:
            start = upcoming[0][0]
            if start <= wall:
                reason, text = "AwaitingContact", f"contact window {_rfc3339(start)} open"
                message = f"{text}, report due by {_rfc3339(start + allowance)}"
            else:
                reason, text = "BetweenContacts", f"next contact window {_rfc3339(start)}"
                message = f"{text} (in {round((start - wall) / 60)} min)"
            node = await self._set_expected_offline(node, "True", reason, message, text) or node
            await self._taint(node, NOT_READY if ready.get("status") == "False" else None)
            return start - wall if start > wall else start + allowance - wall
        if not missed:  # the plan has run out: nothing excuses the silence
            text = "no contact window planned after the last report"
            node = await self._set_expected_offline(node, "False", "NoContactPlanned", text) or node
            return await self._silent_node(node, silent_since, now, None)
        start, end = missed[-1]
        text = f"no contact in planned window {_rfc3339(start)} to {_rfc3339(end)}"
        node = await self._set_expected_offline(node, "False", "ContactMissed", text) or node
        # Eviction counts from the missed deadline, not from the last report.
        deadline = now - (wall - (start + allowance))
        return await self._silent_node(node, deadline, now, f"{UNKNOWN[1]} ({text})")

    async def _silent_node(
        self, node: dict[str, Any], silent_since: float, now: float, message: str | None
    ) -> float | None:
        ready = _condition(node, "Ready")
        never = not ready or ready.get("reason") == NEVER_UPDATED[0]
        node = await self._mark_unknown(node, message) or node
        await self._taint(node, NOT_READY if never else UNREACHABLE)
        return await self._handle_pods(meta(node)["name"], silent_since, now)

    async def _set_expected_offline(
        self, node: dict[str, Any], status: str, reason: str, message: str, same: str = ""
    ) -> dict[str, Any] | None:
        """Write the ExpectedOffline condition; nothing when it already says so (``same``: a
        message prefix that counts as unchanged, so "in N min" does not rewrite it). A node
        that never had it gets none saying False."""
        conditions = list((node.get("status") or {}).get("conditions") or [])
        current = next((c for c in conditions if c.get("type") == EXPECTED_OFFLINE), None)
        if current is None and status == "False":
            return None
        if current is not None and (current.get("status"), current.get("reason")) == (
            status,
            reason,
        ):
            old = str(current.get("message") or "")
            if old == message or (same and old.startswith(same)):
                return None
        stamp = now_rfc3339()
        entry = {"type": EXPECTED_OFFLINE, "status": status, "reason": reason, "message": message}
        entry["lastHeartbeatTime"] = stamp
        transition = current is None or current.get("status") != status
        entry["lastTransitionTime"] = (
            stamp if current is None or transition else current.get("lastTransitionTime", stamp)
        )
        conditions = [c for c in conditions if c.get("type") != EXPECTED_OFFLINE] + [entry]
        m = meta(node)
        log.info("node %s: %s=%s (%s) %s", m["name"], EXPECTED_OFFLINE, status, reason, message)
        body = {"metadata": {"resourceVersion": m["resourceVersion"]}}
        body["status"] = {"conditions": conditions}
        return await self.client.patch(NODES, m["name"], body, subresource="status")

    async def _mark_unknown(
        self, node: dict[str, Any], message: str | None = None
    ) -> dict[str, Any] | None:
        """Conditions to Unknown; ``message`` (when given) replaces Ready's usual one."""
        conditions = list((node.get("status") or {}).get("conditions") or [])
        stamp, changed = now_rfc3339(), False
        for kind in CONDITION_TYPES:
            current = next((c for c in conditions if c.get("type") == kind), None)
            if current is None:
                reason, text = NEVER_UPDATED
                created = meta(node).get("creationTimestamp") or stamp
                conditions.append(
                    {
                        "type": kind,
                        "status": "Unknown",
                        "reason": reason,
                        "message": text,
                        "lastHeartbeatTime": created,
                        "lastTransitionTime": stamp,
                    }
                )
                changed = True
            elif current.get("status") != "Unknown" or (
                kind == "Ready" and message and current.get("message") != message
            ):
                reason, text = UNKNOWN
                if kind == "Ready" and message:
                    text = message
                # lastHeartbeatTime stays: it says when the node last spoke.
                if current.get("status") != "Unknown":
                    current["lastTransitionTime"] = stamp
                current.update(status="Unknown", reason=reason, message=text)
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


def _reporting_taint(ready: dict[str, Any], reported: bool, never: bool) -> str | None:
    """The taint of a node within its grace period."""
    status = ready.get("status")
    if status == "False":
        return NOT_READY
    if status == "Unknown" and not reported and not never:
        return UNREACHABLE  # marked before we started: wait for a real report
    return None


def _contact_plan(node: dict[str, Any]) -> tuple[list[tuple[float, float]], float] | None:
    """The node's contact windows (sorted) and acquisition seconds, or None when it has no
    (readable) annotation: then it is an ordinary node."""
    annotations = meta(node).get("annotations") or {}
    raw = annotations.get(WINDOWS_ANNOTATION)
    if raw is None:
        return None
    try:
        parsed = orjson.loads(raw)
        windows = sorted((float(s), float(e)) for s, e in parsed)
        acquisition = float(annotations.get(ACQUISITION_ANNOTATION) or 0.0)
        # Unix seconds before the year 5138, and an acquisition under a day: beyond that a
        # number is no time (and would overflow the dates written from it).
        if not all(0 <= t < 1e11 for w in windows for t in w) or not 0 <= acquisition < 86_400:
            raise ValueError("out of range")
    except (orjson.JSONDecodeError, TypeError, ValueError):
        log.warning("node %s: unreadable %s %r", meta(node).get("name"), WINDOWS_ANNOTATION, raw)
        return None
    return [w for w in windows if w[1] > w[0]], max(acquisition, 0.0)


def _rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}
