"""The cloud core: the built-in controllers (deployments, replica sets, garbage collection,
namespaces, service accounts, the scheduler, node lifecycle), run together by
``ControllerManager`` over any ``Client``, with any ``ControllerFactory`` a higher layer adds."""

from .controlling import (
    SERVICES,
    Controller,
    ControllerFactory,
    ControllerManager,
    Informers,
    NamespaceIndex,
    QueueShutDown,
    WorkQueue,
)
from .deployments import DeploymentController, pod_template_hash
from .garbagecollection import DEFAULT_RESOURCES, GarbageCollector, ObjectKey
from .namespaces import NAMESPACED_RESOURCES, NamespaceController, ServiceAccountController
from .nodelifecycle import NodeLifecycleController
from .replicasets import ReplicaSetController
from .scheduling import Scheduler

__all__ = [
    "DEFAULT_RESOURCES",
    "NAMESPACED_RESOURCES",
    "SERVICES",
    "Controller",
    "ControllerFactory",
    "ControllerManager",
    "DeploymentController",
    "GarbageCollector",
    "Informers",
    "NamespaceController",
    "NamespaceIndex",
    "NodeLifecycleController",
    "ObjectKey",
    "QueueShutDown",
    "ReplicaSetController",
    "Scheduler",
    "ServiceAccountController",
    "WorkQueue",
    "pod_template_hash",
]
