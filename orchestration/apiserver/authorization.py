"""Who is asking, and may they: the admin does anything; a node (its client certificate,
``CN=system:node:<name>, O=system:nodes``) only what its own work needs, in the spirit of
Kubernetes' Node authorizer and NodeRestriction admission plugin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from ..apis import ResourceType
from .errors import APIError, _details
from .handling import API
from .selection import build_matcher

NODE_USER_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
LEASE_NAMESPACE = "kube-node-lease"

_READ = frozenset({"get", "list", "watch"})
_WRITE = frozenset({"update", "patch"})
# Readable by every node, as the system:node ClusterRole grants (routing, scheduling state).
_PUBLIC = frozenset({("", "nodes"), ("", "pods"), ("", "services"), ("", "endpoints")}) | {
    ("discovery.k8s.io", "endpointslices")
}


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    node: str | None = None  # the node this user is; None for the admin


def node_user(peercert: Mapping[str, Any] | None) -> User | None:
    """The node user a verified client certificate names, or None for any other certificate.

    ``peercert`` is ``SSLSocket.getpeercert()``: only filled in for a certificate that TLS
    verified against the cluster CA.
    """
    if not peercert:
        return None
    cns, orgs = [], []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cns.append(value)
            elif key == "organizationName":
                orgs.append(value)
    if len(cns) != 1 or NODES_GROUP not in orgs:
        return None
    cn = cns[0]
    if not cn.startswith(NODE_USER_PREFIX) or len(cn) == len(NODE_USER_PREFIX):
        return None
    return User(cn, (NODES_GROUP,), cn[len(NODE_USER_PREFIX) :])


def forbidden(
    user: User,
    verb: str,
    rt: ResourceType,
    namespace: str | None,
    name: str,
    subresource: str,
    reason: str = "",
) -> APIError:
    """403 worded as kube-apiserver words it (``ForbiddenStatusError``)."""
    resource = f"{rt.plural}/{subresource}" if subresource else rt.plural
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    msg = (
        f'User "{user.name}" cannot {verb} resource "{resource}" in API group "{rt.group}" {where}'
    )
    if reason:
        msg = f"{msg}: {reason}"
    head = f'{rt.group_resource} "{name}"' if name else rt.group_resource
    return APIError(403, f"{head} is forbidden: {msg}", details=_details(rt, name))


async def authorize(
    user: User,
    verb: str,
    rt: ResourceType,
    namespace: str | None,
    name: str,
    subresource: str,
    api: API,
) -> APIError | None:
    """None if ``user`` may ``verb`` the object, else the 403 to answer with.

    ``verb`` is Kubernetes' (get, list, watch, create, update, patch, delete, deletecollection);
    for ``create`` ``name`` is the name in the body.
    """
    node = user.node
    if node is None:
        return None  # token users are the admin: there are no others
    key = (rt.group, rt.plural)
    ns = namespace or ""

    def deny(reason: str = "") -> APIError:
        return forbidden(user, verb, rt, namespace, name, subresource, reason)

    if key == ("", "nodes"):
        if verb in _READ:
            return None
        if name != node:
            return deny(f"node '{node}' cannot modify node '{name}'" if name else "")
        # NodeRestriction: labels and spec (taints, unschedulable) steer workloads and are the
        # admin's; a node creates itself and writes its status, nothing more.
        if (verb == "create" and not subresource) or (verb in _WRITE and subresource == "status"):
            return None
        return deny()
    if key == ("coordination.k8s.io", "leases") and ns == LEASE_NAMESPACE and name == node:
        return None if verb in _READ | _WRITE | {"create", "delete"} else deny()
    if (
        key == ("", "pods")
        and name
        and ((verb in _WRITE and subresource == "status") or (verb == "delete" and not subresource))
    ):
        # NodeRestriction: a node updates the status of, and deletes, only its own pods.
        pod = await api.get(rt, ns, name)
        if (pod.get("spec") or {}).get("nodeName") == node:
            return None
        return deny(f"node '{node}' can only modify pods with spec.nodeName set to itself")
    if key == ("", "events") and verb in {"create", "patch", "update"} and not subresource:
        return None  # kube's system:node role: nodes (and apps via their MetaServer) record events
    if key in _PUBLIC:
        return None if verb in _READ and not subresource else deny()
    if key in (("", "secrets"), ("", "configmaps")):
        if verb != "get":
            return deny("can only get individual resources of this type")
        if name and await _referenced(api, node, ns, rt.plural, name):
            return None
        return deny(f"no relationship found between node '{node}' and this object")
    return deny()


async def _referenced(api: API, node: str, namespace: str, plural: str, name: str) -> bool:
    """Whether a pod bound to ``node`` in ``namespace`` uses the Secret/ConfigMap ``name``."""
    pod_rt = api.registry.lookup("", "v1", "pods")
    assert pod_rt is not None
    matches = build_matcher(pod_rt, "", f"spec.nodeName={node}")
    pods = await api.list(pod_rt, namespace, matches=matches)
    want = "secret" if plural == "secrets" else "configmap"
    return any((want, name) in _references(pod) for pod in pods["items"])


def _references(pod: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """("secret" | "configmap", name) for each object the pod's spec uses."""
    spec = pod.get("spec") or {}
    for ref in spec.get("imagePullSecrets") or ():
        yield "secret", (ref or {}).get("name", "")
    for vol in spec.get("volumes") or ():
        vol = vol or {}
        if "secret" in vol:
            yield "secret", (vol["secret"] or {}).get("secretName", "")
        if "configMap" in vol:
            yield "configmap", (vol["configMap"] or {}).get("name", "")
        for src in ((vol.get("projected") or {}).get("sources")) or ():
            src = src or {}
            if "secret" in src:
                yield "secret", (src["secret"] or {}).get("name", "")
            if "configMap" in src:
                yield "configmap", (src["configMap"] or {}).get("name", "")
    containers = [
        *(spec.get("initContainers") or ()),
        *(spec.get("containers") or ()),
        *(spec.get("ephemeralContainers") or ()),
    ]
    for c in containers:
        c = c or {}
        for env in c.get("env") or ():
            source = (env or {}).get("valueFrom") or {}
            if "secretKeyRef" in source:
                yield "secret", (source["secretKeyRef"] or {}).get("name", "")
            if "configMapKeyRef" in source:
                yield "configmap", (source["configMapKeyRef"] or {}).get("name", "")
        for env_from in c.get("envFrom") or ():
            env_from = env_from or {}
            if "secretRef" in env_from:
                yield "secret", (env_from["secretRef"] or {}).get("name", "")
            if "configMapRef" in env_from:
                yield "configmap", (env_from["configMapRef"] or {}).get("name", "")
