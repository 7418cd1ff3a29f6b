"""One async client interface for controllers, whatever API server is behind it.

``LocalClient`` calls an in-process ``API``; ``KubeClient`` speaks HTTPS to ours or to any
Kubernetes API server (it imports ``kubernetes`` only when built). ``Informer`` keeps a
watched cache over either.
"""

from ._base import (
    CONFIGMAPS,
    CRDS,
    DEPLOYMENTS,
    DEVICEMODELS,
    DEVICES,
    EVENTS,
    LEASES,
    NAMESPACES,
    NODES,
    PODS,
    REPLICASETS,
    RULEENDPOINTS,
    RULES,
    SECRETS,
    SERVICEACCOUNTS,
    Client,
    ClientError,
    ConflictError,
    ExpiredError,
    NotFoundError,
    PatchType,
    Resource,
    client_error,
)
from ._informing import Handler, Informer
from ._kube import KubeClient
from ._local import LocalClient

__all__ = [
    "CONFIGMAPS",
    "CRDS",
    "DEPLOYMENTS",
    "DEVICEMODELS",
    "DEVICES",
    "EVENTS",
    "LEASES",
    "NAMESPACES",
    "NODES",
    "PODS",
    "REPLICASETS",
    "RULEENDPOINTS",
    "RULES",
    "SECRETS",
    "SERVICEACCOUNTS",
    "Client",
    "ClientError",
    "ConflictError",
    "ExpiredError",
    "Handler",
    "Informer",
    "KubeClient",
    "LocalClient",
    "NotFoundError",
    "PatchType",
    "Resource",
    "client_error",
]
