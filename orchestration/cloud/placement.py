"""What the scheduler decides with, as plain functions: resource quantities, pod requests,
node affinity, taints and tolerations, per-node fit and scores (kube-scheduler's default
filter and score plugins, reduced to what Orbiter's nodes carry).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

_SUFFIXES: dict[str, Decimal] = {
    **{s: Decimal(2) ** (10 * i) for i, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("k", 3), ("K", 3))},
    **{s: Decimal(10) ** (3 * i) for i, s in enumerate(("M", "G", "T", "P", "E"), start=2)},
}
# A number, then an exponent or a suffix ("1E" is one exa; "1E3" is a thousand).
_QUANTITY = re.compile(
    r"([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkKMGTPE]))?"
)

# kube-scheduler's scoring defaults for containers that request nothing: otherwise empty
# pods would all look free and pile onto the first node.
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 2**20

NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
UNSCHEDULABLE = "node.kubernetes.io/unschedulable"


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity ("500m", "1.5", "128Mi", "1e3", 2) as a number."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"not a quantity: {value!r}")
    text = str(value).strip()
    found = _QUANTITY.fullmatch(text)
    if found is None:
        raise ValueError(f"not a quantity: {value!r}")
    number, exponent, suffix = found.groups()
    try:
        amount = Decimal(number) * (Decimal(10) ** int(exponent[1:]) if exponent else 1)
    except InvalidOperation:
        raise ValueError(f"not a quantity: {value!r}") from None
    amount *= _SUFFIXES[suffix or ""]
    if amount < 0:
        raise ValueError(f"a negative quantity: {value!r}")
    return amount


def amount(resource: str, value: Any) -> int:
    """``value`` of ``resource`` in the scheduler's unit: millicores for cpu, else whole
    units (bytes, pods, devices), rounded up as Quantity.MilliValue/Value do."""
    scale = 1000 if resource == "cpu" else 1
    return int((parse_quantity(value) * scale).to_integral_value(rounding=ROUND_CEILING))


@dataclass
class Usage:
    """What a pod asks for, or what a node's pods ask for together."""

    requests: dict[str, int] = field(default_factory=dict)
    nonzero_cpu: int = 0  # with the scoring defaults above
    nonzero_memory: int = 0
    pods: int = 0

    def add(self, other: Usage, sign: int = 1) -> None:
        for name, value in other.requests.items():
            total = self.requests.get(name, 0) + sign * value
            if total:
                self.requests[name] = total
            else:
                self.requests.pop(name, None)
        self.nonzero_cpu += sign * other.nonzero_cpu
        self.nonzero_memory += sign * other.nonzero_memory
        self.pods += sign * other.pods


def _container_requests(container: dict[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    # The API server defaults unset requests to the limits; do the same here.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: amount(name, value) for name, value in merged.items()}


def pod_usage(pod: dict[str, Any]) -> Usage:
    """Containers summed, init containers at their maximum, plus the pod overhead (kube's
    computePodResourceRequest without sidecars). Raises ValueError on a bad quantity."""
    spec = pod.get("spec") or {}
    usage = Usage(pods=1)
    total: dict[str, int] = {}
    for container in spec.get("containers") or []:
        own = _container_requests(container)
        for name, value in own.items():
            total[name] = total.get(name, 0) + value
        usage.nonzero_cpu += own.get("cpu") or DEFAULT_MILLI_CPU
        usage.nonzero_memory += own.get("memory") or DEFAULT_MEMORY
    for container in spec.get("initContainers") or []:
        for name, value in _container_requests(container).items():
            total[name] = max(total.get(name, 0), value)
    for name, value in (spec.get("overhead") or {}).items():
        total[name] = total.get(name, 0) + amount(name, value)
    usage.requests = {name: value for name, value in total.items() if value}
    return usage


def allocatable(node: dict[str, Any]) -> dict[str, int]:
    """``status.allocatable`` (``capacity`` if a node reports none); unreadable entries
    count as zero."""
    status = node.get("status") or {}
    found: dict[str, int] = {}
    for name, value in (status.get("allocatable") or status.get("capacity") or {}).items():
        try:
            found[name] = amount(name, value)
        except ValueError:
            continue
    return found


# --- node affinity --------------------------------------------------------------------------


def requirement_matches(req: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """One NodeSelectorRequirement: In, NotIn, Exists, DoesNotExist, Gt, Lt."""
    key, op, values = req.get("key"), req.get("operator"), list(req.get("values") or [])
    present = key in labels
    if op == "In":
        return present and labels[str(key)] in values
    if op == "NotIn":
        return not present or labels[str(key)] not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(values) == 1:
        try:
            have, bound = int(labels[str(key)]), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def term_matches(term: Mapping[str, Any], node: dict[str, Any]) -> bool:
    """One NodeSelectorTerm: its expressions (labels) and fields (metadata.name) ANDed; an
    empty term matches nothing."""
    meta = node.get("metadata") or {}
    exprs, fields = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not exprs and not fields:
        return False
    labels = meta.get("labels") or {}
    node_fields = {"metadata.name": str(meta.get("name", ""))}
    return all(requirement_matches(r, labels) for r in exprs) and all(
        requirement_matches(r, node_fields) for r in fields
    )


def _node_affinity(pod: dict[str, Any]) -> dict[str, Any]:
    return ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}


def node_affinity_matches(pod: dict[str, Any], node: dict[str, Any]) -> bool:
    """``nodeSelector`` and the required node affinity (its terms ORed)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    required = _node_affinity(pod).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return True
    return any(term_matches(t, node) for t in required.get("nodeSelectorTerms") or [])


def preferred_affinity(pod: dict[str, Any], node: dict[str, Any]) -> int:
    """The summed weights of the preferred node affinity terms ``node`` matches."""
    terms = _node_affinity(pod).get("preferredDuringSchedulingIgnoredDuringExecution") or []
    return sum(
        int(t.get("weight") or 0) for t in terms if term_matches(t.get("preference") or {}, node)
    )


# --- taints and tolerations -----------------------------------------------------------------


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' Toleration.ToleratesTaint: an empty effect or key matches any; Exists
    ignores the value, Equal (the default) compares it."""
    effect, key = toleration.get("effect"), toleration.get("key")
    if effect and effect != taint.get("effect"):
        return False
    if key and key != taint.get("key"):
        return False
    op = toleration.get("operator") or "Equal"
    if op == "Exists":
        return True
    return op == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def untolerated(
    tolerations: Iterable[Mapping[str, Any]],
    taints: Iterable[Mapping[str, Any]],
    effects: tuple[str, ...] = ("NoSchedule", "NoExecute"),
) -> list[Mapping[str, Any]]:
    """The taints with one of ``effects`` that no toleration tolerates."""
    tolerations = list(tolerations)
    return [
        t
        for t in taints
        if t.get("effect") in effects and not any(tolerates(tol, t) for tol in tolerations)
    ]


def is_ready(node: dict[str, Any]) -> str:
    """The node's Ready condition status: "True", "False", "Unknown" ("False" if absent)."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status") or "False")
    return "False"


def node_taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The node's taints plus the one the node lifecycle controller adds to a node that is
    not Ready (not-ready, or unreachable when its status is Unknown): such nodes take only
    pods that tolerate it, as DaemonSet pods do."""
    taints = [dict(t) for t in (node.get("spec") or {}).get("taints") or []]
    ready = is_ready(node)
    if ready != "True":
        key = UNREACHABLE if ready == "Unknown" else NOT_READY
        if not any(t.get("key") == key and t.get("effect") == "NoSchedule" for t in taints):
            taints.append({"key": key, "effect": "NoSchedule"})
    return taints


# --- fit and score --------------------------------------------------------------------------


def misfits(pod: dict[str, Any], usage: Usage, node: dict[str, Any], used: Usage) -> list[str]:
    """Why ``pod`` (asking ``usage``) cannot go to ``node`` (its pods asking ``used``), in
    kube-scheduler's words and filter order; empty if it fits."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    cordon = [{"key": UNSCHEDULABLE, "effect": "NoSchedule"}]
    if (node.get("spec") or {}).get("unschedulable") and untolerated(tolerations, cordon):
        return ["node(s) were unschedulable"]
    blocking = untolerated(tolerations, node_taints(node))
    if blocking:
        taint = blocking[0]
        return [f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"]
    if not node_affinity_matches(pod, node):
        return ["node(s) didn't match Pod's node affinity/selector"]
    free = allocatable(node)
    reasons = []
    if used.pods + usage.pods > free.get("pods", 0):
        reasons.append("Too many pods")
    for name, wanted in sorted(usage.requests.items(), key=lambda kv: (kv[0] != "cpu", kv[0])):
        if wanted > free.get(name, 0) - used.requests.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return reasons


def failure_message(nodes: int, reasons: Mapping[str, int]) -> str:
    """kube-scheduler's FitError text: ``0/3 nodes are available: 1 ..., 2 ....``"""
    if nodes == 0:
        return "no nodes available to schedule pods"
    parts = sorted(f"{count} {reason}" for reason, count in reasons.items())
    return f"0/{nodes} nodes are available: {', '.join(parts)}."


def _fractions(usage: Usage, node: dict[str, Any], used: Usage) -> tuple[float, float] | None:
    free = allocatable(node)
    cpu, memory = free.get("cpu", 0), free.get("memory", 0)
    if cpu <= 0 or memory <= 0:
        return None
    return (
        (used.nonzero_cpu + usage.nonzero_cpu) / cpu,
        (used.nonzero_memory + usage.nonzero_memory) / memory,
    )


def resource_score(usage: Usage, node: dict[str, Any], used: Usage) -> int:
    """NodeResourcesFit (least allocated) plus NodeResourcesBalancedAllocation, 0-200:
    emptier nodes, and nodes whose cpu and memory fill evenly, score higher."""
    fractions = _fractions(usage, node, used)
    if fractions is None:
        return 0
    least = sum(int(max(0.0, 1 - f) * 100) for f in fractions) // 2
    balanced = int((1 - abs(fractions[0] - fractions[1]) / 2) * 100)
    return least + balanced


def rank(
    pod: dict[str, Any], usage: Usage, candidates: list[tuple[dict[str, Any], Usage]]
) -> list[tuple[int, str]]:
    """(score, name) of each feasible node, best first; equal scores go by name, so the
    choice is deterministic. Preferred node affinity (weight 2) and intolerable
    PreferNoSchedule taints (weight 3) count as in kube-scheduler, normalized to 0-100."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    affinity = [preferred_affinity(pod, node) for node, _ in candidates]
    avoided = [
        len(untolerated(tolerations, node_taints(node), ("PreferNoSchedule",)))
        for node, _ in candidates
    ]
    top_affinity, top_avoided = max(affinity, default=0), max(avoided, default=0)
    scored = []
    for (node, used), pref, bad in zip(candidates, affinity, avoided, strict=True):
        score = resource_score(usage, node, used)
        if top_affinity > 0:
            score += 2 * (pref * 100 // top_affinity)
        score += 3 * (100 - bad * 100 // top_avoided if top_avoided else 100)
        scored.append((score, str((node.get("metadata") or {}).get("name", ""))))
    scored.sort(key=lambda s: (-s[0], s[1]))
    return scored
