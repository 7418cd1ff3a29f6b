"""The JointInferenceService controller: Sedna's GM feature controller for joint inference.

For each service, level-triggered: validate it (``validation``), then make what its workers
are made of (``workers``: two Deployments and the cloud worker's Service) after checking the
nodes they target can hold them (``placement``), and write its status (``status``).

- A problem (an invalid spec, a missing Model, a worker that cannot be placed, a name taken
  by an object the service does not own) becomes the current condition, and nothing is
  created or changed: workers already running stay as they are until it is fixed. Fixing the
  spec, creating the Model or a node joining or freeing room triggers a new look.
- A worker's Deployment or the Service deleted while the service exists is made again; a
  spec change rewrites them (their spec-hash annotation tells).
- The edge worker reaches the big model at the cloud worker pod's ``status.podIP`` once it
  has one (Orbiter's pods share their node's network; Kubernetes pods have routable IPs).
  Until then it is given the Service's name ``<name>-cloud.<namespace>``, as Sedna does for
  EdgeMesh; when the IP becomes known the edge Deployment is updated (its pods restart
  once), and it is not switched back while the cloud pod is replaced.
- Placement advice: with an ``advisor`` (see ``advice``), the edge worker's node (its
  template's ``nodeName``) is vetted by it before the Deployment is written. A refusal is a
  ``Failed``/``Unschedulable`` condition with the advisor's reason (nothing is created or
  changed, as for any problem); an acceptance merges the advice's env into the worker and
  appends the chosen option and reason to the current condition's message. The advisor reads
  what it needs through the client on each look: its own objects changing are seen at the
  next look (a service or node event, or the resync).
- Status: ``active`` is the available replicas of both Deployments, ``failed`` the worker
  pods in phase Failed; the current condition is the problem if any, else ``Failed`` (a
  worker pod failed), ``Running`` (both workers have an available replica) or ``Pending``.
  It is written as a merge patch of the status subresource holding only those fields (and
  ``startTime``), with a resourceVersion precondition: ``metrics``, written by whoever
  reports the workers' statistics, is never touched.

Only the ``Client`` interface is used, so this runs against a real Kubernetes cluster too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from orbiter.orchestration.client import DEPLOYMENTS, NODES, PODS, Client, Resource
from orbiter.orchestration.cloud.controlling import (
    SERVICES,
    Controller,
    Informers,
    being_deleted,
    controller_ref,
    meta,
    now_rfc3339,
    refers_to,
)

from ..apis import JOINT_INFERENCE_SERVICES, MODELS
from .advice import Advice, PlacementAdvisor
from .placement import check_placement
from .status import FAILED, PENDING, RUNNING, Problem, status_patch
from .validation import validate
from .workers import (
    CLOUD,
    DEFAULT_LC_SERVER,
    EDGE,
    LC_SERVER_ANNOTATION,
    NAME_LABEL,
    SPEC_HASH,
    UID_LABEL,
    WORKER_TYPE_LABEL,
    cloud_service,
    deployment,
    deployment_name,
    lc_server_of,
    pinned_node,
    service_name,
    worker_spec,
)

__all__ = ["JointInferenceController"]

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a JointInferenceService


def _key(obj: dict[str, Any]) -> Key:
    return (meta(obj).get("namespace") or "", meta(obj).get("name", ""))


def _node_view(node: dict[str, Any] | None) -> tuple[Any, ...]:
    """What placement reads of a node (heartbeats change the rest all the time)."""
    if node is None:
        return ()
    status = node.get("status") or {}
    return (meta(node).get("labels"), status.get("allocatable"), status.get("capacity"))


def _lc_server_view(node: dict[str, Any] | None) -> str | None:
    return ((meta(node).get("annotations") or {}) if node else {}).get(LC_SERVER_ANNOTATION)


def _env(deployment: dict[str, Any] | None, name: str) -> str | None:
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    for container in (template.get("spec") or {}).get("containers") or []:
        for entry in container.get("env") or []:
            if entry.get("name") == name and "value" in entry:
                return str(entry["value"])
    return None


class JointInferenceController(Controller[Key]):
    """``lc_server``: the local controller URL given to workers (``LC_SERVER``);
    ``advisor``: asked before the edge worker is placed on its node (None: nobody asked)."""

    name = "jointinference-controller"

    def __init__(
        self,
        client: Client,
        informers: Informers,
        *,
        workers: int = 2,
        resync: float | None = 300.0,
        lc_server: str = DEFAULT_LC_SERVER,
        advisor: PlacementAdvisor | None = None,
    ) -> None:
        super().__init__(client, informers, workers=workers, resync=resync)
        self.lc_server = lc_server
        self.advisor = advisor
        self.services = informers(JOINT_INFERENCE_SERVICES)
        self.service_index = informers.index(JOINT_INFERENCE_SERVICES)
        self.models = informers(MODELS)
        self.deployments = informers(DEPLOYMENTS)
        self.kube_services = informers(SERVICES)
        self.pods = informers(PODS)
        self.pod_index = informers.index(PODS)
        self.nodes = informers(NODES)
        self.services.on_event(self._on_service)
        self.models.on_event(self._on_model)
        self.deployments.on_event(self._on_owned)
        self.kube_services.on_event(self._on_owned)
        self.pods.on_event(self._on_pod)
        self.nodes.on_event(self._on_node)
        self._unplaced: set[Key] = set()  # services waiting for room or a node

    def keys(self) -> Iterable[Key]:
        return [_key(s) for s in self.services.items()]

    # --- what triggers a look ---------------------------------------------------------------

    async def _on_service(
        self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if etype == "DELETED":
            self._unplaced.discard(_key(obj))
        self.enqueue(_key(obj))

    async def _on_model(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if (
            etype == "MODIFIED"
            and old is not None
            and (
                obj.get("spec") == old.get("spec")
                and meta(obj).get("annotations") == meta(old).get("annotations")
            )
        ):
            return  # a status write (metrics, updateTime): nothing a service uses
        ns, name = _key(obj)
        for service in self.service_index.items(ns):
            used = {(worker_spec(service, k).get("model") or {}).get("name") for k in (EDGE, CLOUD)}
            if name in used:
                self.enqueue(_key(service))

    async def _on_owned(self, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        ns = meta(obj).get("namespace") or ""
        for ref in (controller_ref(obj), controller_ref(old)):
            if ref is not None and refers_to(ref, JOINT_INFERENCE_SERVICES):
                self.enqueue((ns, ref["name"]))

    async def _on_pod(self, etype: str, pod: dict[str, Any], old: dict[str, Any] | None) -> None:
        owner = (meta(pod).get("labels") or {}).get(NAME_LABEL)
        if owner:
            self.enqueue((meta(pod).get("namespace") or "", owner))
        phase = (pod.get("status") or {}).get("phase")
        if etype == "DELETED" or phase in ("Succeeded", "Failed"):
            self._retry_unplaced()  # room may have been freed

    async def _on_node(self, etype: str, node: dict[str, Any], old: dict[str, Any] | None) -> None:
        if etype != "MODIFIED" or _node_view(node) != _node_view(old):
            self._retry_unplaced()
        if _lc_server_view(node) != _lc_server_view(old):
            # The node's LC moved (or announced itself): its workers get the new LC_SERVER.
            name = meta(node).get("name")
            for service in self.services.items():
                if any(pinned_node(service, kind) == name for kind in (CLOUD, EDGE)):
                    self.enqueue(_key(service))

    def _retry_unplaced(self) -> None:
        for key in self._unplaced:
            self.enqueue(key)

    # --- reconciling ------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> float | None:
        ns, name = key
        service = self.services.get(name, ns)
        if service is None or being_deleted(service):
            self._unplaced.discard(key)
            return None  # its workers go with it (garbage collection)
        problem = validate(service, lambda model: self.models.get(model, ns))
        advice, placed = None, ""
        if problem is None:
            node = pinned_node(service, EDGE)
            if node is not None and self.advisor is not None:
                advice = await self.advisor(self.client, service, node, EDGE)
            if advice is not None and not advice.allowed:
                problem = Problem(
                    FAILED, "Unschedulable", f"node {node} refuses the edge worker: {advice.reason}"
                )
            elif advice is not None:
                chosen = f"{advice.option}: " if advice.option else ""
                placed = f"edge worker on {node}: {chosen}{advice.reason}"
        if problem is None:
            problem = await self._sync_workers(service, advice)
        if problem is not None and problem.reason in ("NodeNotFound", "Unschedulable"):
            self._unplaced.add(key)
        else:
            self._unplaced.discard(key)
        await self._sync_status(service, problem, placed)
        return None

    async def _sync_workers(self, service: dict[str, Any], advice: Advice | None) -> Problem | None:
        m = meta(service)
        ns, uid = m["namespace"], m["uid"]
        models = {
            kind: self.models.get((worker_spec(service, kind).get("model") or {})["name"], ns) or {}
            for kind in (CLOUD, EDGE)
        }
        current = {
            kind: self.deployments.get(deployment_name(m["name"], kind), ns)
            for kind in (CLOUD, EDGE)
        }
        desired = {
            CLOUD: deployment(
                service, CLOUD, model=models[CLOUD], lc_server=self._lc_server(service, CLOUD)
            ),
            EDGE: deployment(
                service,
                EDGE,
                model=models[EDGE],
                lc_server=self._lc_server(service, EDGE),
                big_model_ip=self._big_model_ip(service, current[EDGE]),
                cloud_model=meta(models[CLOUD]).get("name", ""),
                extra_env=advice.env if advice is not None else None,
            ),
        }
        taken = self._not_ours(DEPLOYMENTS, service, *current.values())
        if taken is not None:
            return taken
        stale = [kind for kind in (CLOUD, EDGE) if _hash(current[kind]) != _hash(desired[kind])]
        if stale:
            nodes, pods = self.nodes.items(), self.pods.items()
            for kind in stale:
                template = desired[kind]["spec"]["template"]
                problem = check_placement(
                    kind, template, models[kind], nodes, pods, (UID_LABEL, uid)
                )
                if problem is not None:
                    return problem
        for kind in stale:  # the cloud worker first: the edge one needs it
            await self._write(DEPLOYMENTS, current[kind], desired[kind])
        svc = cloud_service(service)
        existing = self.kube_services.get(service_name(m["name"]), ns)
        taken = self._not_ours(SERVICES, service, existing)
        if taken is not None:
            return taken
        if _hash(existing) != _hash(svc):
            await self._write(SERVICES, existing, svc)
        return None

    def _lc_server(self, service: dict[str, Any], kind: str) -> str:
        """The LC of the node the template pins (nodeName), else the default: a template
        placed by nodeSelector could land anywhere, so it gets the one shared default."""
        node = pinned_node(service, kind)
        return lc_server_of(self.nodes.get(node) if node else None, self.lc_server)

    def _big_model_ip(self, service: dict[str, Any], edge: dict[str, Any] | None) -> str:
        """The cloud worker pod's IP; else what the edge worker was given; else the
        Service's DNS name (Sedna's EdgeMesh address)."""
        m = meta(service)
        for pod in sorted(self.pod_index.items(m["namespace"]), key=lambda p: meta(p)["name"]):
            labels = meta(pod).get("labels") or {}
            status = pod.get("status") or {}
            if (
                labels.get(UID_LABEL) == m["uid"]
                and labels.get(WORKER_TYPE_LABEL) == CLOUD
                and status.get("phase") == "Running"
                and status.get("podIP")
                and not being_deleted(pod)
            ):
                return str(status["podIP"])
        return _env(edge, "BIG_MODEL_IP") or f"{service_name(m['name'])}.{m['namespace']}"

    @staticmethod
    def _not_ours(
        res: Resource, service: dict[str, Any], *objs: dict[str, Any] | None
    ) -> Problem | None:
        """A problem if one of ``objs`` (found under a worker's name) is not the service's."""
        m = meta(service)
        for obj in objs:
            ref = controller_ref(obj)
            if obj is None or (ref is not None and ref.get("uid") == m["uid"]):
                continue
            what = f'{res.kind.lower()} "{meta(obj)["name"]}"'
            if refers_to(ref, JOINT_INFERENCE_SERVICES) and (ref or {}).get("name") == m["name"]:
                # A deleted namesake's, which garbage collection removes: its going wakes us.
                return Problem(
                    PENDING,
                    "WorkersTerminating",
                    f"waiting for {what} of a deleted service of this name to go",
                )
            return Problem(
                FAILED, "NameConflict", f"{what} exists and is not owned by this service"
            )
        return None

    async def _write(
        self, res: Resource, current: dict[str, Any] | None, desired: dict[str, Any]
    ) -> None:
        ns = meta(desired)["namespace"]
        if current is None:
            log.info("creating %s %s/%s", res.kind, ns, meta(desired)["name"])
            await self.client.create(res, desired, ns)
            return
        # Replaced whole (a merge patch would keep template fields the spec dropped), on top
        # of what others keep in metadata and, for a Service, its allocated fields.
        cm = meta(current)
        body = {
            **desired,
            "metadata": {
                **meta(desired),
                "resourceVersion": cm["resourceVersion"],
                "labels": {**(cm.get("labels") or {}), **meta(desired)["labels"]},
                "annotations": {**(cm.get("annotations") or {}), **meta(desired)["annotations"]},
            },
        }
        if res == SERVICES:
            body["spec"] = {**(current.get("spec") or {}), **desired["spec"]}
        log.info("updating %s %s/%s", res.kind, ns, meta(desired)["name"])
        await self.client.replace(res, body, ns)

    # --- status -----------------------------------------------------------------------------

    async def _sync_status(
        self, service: dict[str, Any], problem: Problem | None, placed: str = ""
    ) -> None:
        """``placed``: the advisor's placement, appended to a condition that is not a problem."""
        m = meta(service)
        ns, uid = m["namespace"], m["uid"]
        workers = {
            kind: self.deployments.get(deployment_name(m["name"], kind), ns)
            for kind in (CLOUD, EDGE)
        }
        available = {
            kind: int(((d or {}).get("status") or {}).get("availableReplicas") or 0)
            for kind, d in workers.items()
        }
        ours = [
            p
            for p in self.pod_index.items(ns)
            if (meta(p).get("labels") or {}).get(UID_LABEL) == uid
        ]
        failed = sorted(
            meta(p)["name"] for p in ours if (p.get("status") or {}).get("phase") == "Failed"
        )
        condition = problem
        if condition is None and failed:
            condition = Problem(FAILED, "WorkerFailed", f"worker pods failed: {', '.join(failed)}")
        elif condition is None and all(available.values()):
            condition = Problem(
                RUNNING, "WorkersAvailable", "the cloud and edge workers are available"
            )
        elif condition is None:
            counts = ", ".join(
                f"{kind} {available[kind]}/{int(((d or {}).get('spec') or {}).get('replicas', 1))}"
                for kind, d in workers.items()
            )
            condition = Problem(
                PENDING, "WorkersNotReady", f"waiting for available workers: {counts}"
            )
        if problem is None and placed:
            condition = dataclasses.replace(condition, message=f"{condition.message}; {placed}")
        patch = status_patch(
            service.get("status"),
            condition,
            active=sum(available.values()),
            failed=len(failed),
            now=now_rfc3339(),
        )
        if patch is None:
            return
        body = {"metadata": {"resourceVersion": m["resourceVersion"]}, "status": patch}
        await self.client.patch(JOINT_INFERENCE_SERVICES, m["name"], body, ns, subresource="status")


def _hash(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else (meta(obj).get("annotations") or {}).get(SPEC_HASH)
