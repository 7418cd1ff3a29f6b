"""Can the node a worker targets hold it? Asked before a worker's Deployment is created or
its template changed, so that a worker that cannot run shows as a condition on the service
saying why, not as a pod that fails or hangs later.

The candidate nodes are the one the template's ``nodeName`` names, or else every node its
``nodeSelector`` and required node affinity match (all nodes when it has neither).

- No candidate (the named node does not exist, or no node matches): ``Pending``, reason
  ``NodeNotFound`` -- a node may still join, and node events trigger a new look.
- A named node the template's ``nodeSelector``/affinity does not match (e.g.
  ``kubernetes.io/arch: arm64`` against an amd64 node; the kubelet would refuse the pod):
  ``Failed``, reason ``Unschedulable``.
- Architecture of the model: a Model annotated ``sedna.io/arch`` (comma-separated
  ``kubernetes.io/arch`` values, e.g. ``arm64`` for a model compiled for ARM) runs only on
  nodes whose ``kubernetes.io/arch`` label is one of them.
- Resources: the template's requests (limits where no request is given, init containers at
  their largest, as the scheduler counts) must fit the node's ``status.allocatable`` less
  what the node's unfinished pods request -- pods of this same service excepted, since an
  update replaces them. This covers memory, cpu and accelerators alike: a template
  requesting ``nvidia.com/gpu: 1`` needs a node that advertises that resource.

A candidate failing any rule is ``Failed``/``Unschedulable`` when no candidate passes, with
each node's reason in the message. Taints, readiness and the pod count are left to the
scheduler and the node, as they are transient.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orbiter.orchestration.cloud.placement import (
    Usage,
    allocatable,
    node_affinity_matches,
    pod_usage,
)

from .status import FAILED, PENDING, Problem

__all__ = ["ARCH_ANNOTATION", "ARCH_LABEL", "check_placement"]

ARCH_ANNOTATION = "sedna.io/arch"
ARCH_LABEL = "kubernetes.io/arch"
_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
_FINISHED = ("Succeeded", "Failed")


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def _show(resource: str, value: int) -> str:
    """An amount in the unit a user writes it in: cores or millicores, binary bytes."""
    if resource == "cpu":
        return str(value // 1000) if value % 1000 == 0 else f"{value}m"
    if resource in ("memory", "ephemeral-storage") or resource.startswith("hugepages-"):
        for suffix, size in _BINARY:
            if value >= size:
                whole, rest = divmod(value, size)
                return f"{whole}{suffix}" if rest == 0 else f"{value / size:.1f}{suffix}"
    return str(value)


def _used(pods: Iterable[dict[str, Any]], skip_label: tuple[str, str]) -> dict[str, Usage]:
    """What each node's unfinished pods request, less the pods carrying ``skip_label``."""
    key, value = skip_label
    used: dict[str, Usage] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in _FINISHED:
            continue
        if (_meta(pod).get("labels") or {}).get(key) == value:
            continue
        try:
            usage = pod_usage(pod)
        except ValueError:
            continue  # a pod the API took with a bad quantity: the scheduler counts it as 0
        used.setdefault(node, Usage()).add(usage)
    return used


def _misfit(
    worker: str,
    pod: dict[str, Any],
    usage: Usage,
    node: dict[str, Any],
    used: Usage,
    archs: list[str],
) -> str | None:
    name = _meta(node).get("name", "")
    labels = _meta(node).get("labels") or {}
    if not node_affinity_matches(pod, node):
        selector = (pod.get("spec") or {}).get("nodeSelector") or {}
        unmet = [f"{k}={v}" for k, v in sorted(selector.items()) if labels.get(k) != v]
        if unmet:
            found = ", ".join(f"{k}={labels.get(k, '(none)')}" for k in sorted(selector))
            return (
                f"node {name} does not match the {worker} worker's nodeSelector "
                f"{', '.join(unmet)} (it has {found})"
            )
        return f"node {name} does not match the {worker} worker's required node affinity"
    if archs and labels.get(ARCH_LABEL) not in archs:
        return (
            f"node {name} is {labels.get(ARCH_LABEL, 'of unknown architecture')}, the "
            f"{worker} worker's model runs on {', '.join(archs)} ({ARCH_ANNOTATION})"
        )
    free = allocatable(node)
    for resource, wanted in sorted(usage.requests.items()):
        have = free.get(resource, 0)
        taken = used.requests.get(resource, 0)
        if have <= 0:
            return (
                f"node {name} has no {resource}, the {worker} worker requests "
                f"{_show(resource, wanted)}"
            )
        if wanted > have - taken:
            by_pods = f" ({_show(resource, taken)} of it requested by its pods)" if taken else ""
            return (
                f"node {name} has {_show(resource, have)} allocatable {resource}{by_pods}, "
                f"the {worker} worker requests {_show(resource, wanted)}"
            )
    return None


def check_placement(
    worker: str,
    template: dict[str, Any],
    model: dict[str, Any],
    nodes: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
    own_pods: tuple[str, str],
) -> Problem | None:
    """Why ``worker`` (``edge``/``cloud``), built from the pod ``template`` to run
    ``model``, cannot go where it targets; None if it can. ``own_pods`` is a (label, value)
    marking the pods whose requests not to count (the service's own)."""
    spec = template.get("spec") or {}
    pod = {"metadata": template.get("metadata") or {}, "spec": spec}
    try:
        usage = pod_usage(pod)
    except ValueError as exc:
        return Problem(FAILED, "InvalidSpec", f"{worker}Worker.template: {exc}")
    annotation = (_meta(model).get("annotations") or {}).get(ARCH_ANNOTATION) or ""
    archs = [a.strip() for a in str(annotation).split(",") if a.strip()]
    nodes = sorted(nodes, key=lambda n: str(_meta(n).get("name", "")))
    named = spec.get("nodeName")
    if named:
        candidates = [n for n in nodes if _meta(n).get("name") == named]
        if not candidates:
            return Problem(
                PENDING, "NodeNotFound", f"node {named} (the {worker} worker's nodeName) not found"
            )
    else:
        candidates = [n for n in nodes if node_affinity_matches(pod, n)]
        if not candidates:
            message = (
                f"no node matches the {worker} worker's nodeSelector and node affinity"
                if nodes
                else f"no node to run the {worker} worker"
            )
            return Problem(PENDING, "NodeNotFound", message)
    used = _used(pods, own_pods)
    reasons = []
    for node in candidates:
        why = _misfit(
            worker, pod, usage, node, used.get(_meta(node).get("name", "")) or Usage(), archs
        )
        if why is None:
            return None
        reasons.append(why)
    return Problem(FAILED, "Unschedulable", "; ".join(reasons))
