"""Edged's process runtime: the pods bound to an edge node run as supervised local
processes, and keep running across EdgeCore restarts.

Where to read on: ``runtime.py`` (the API, and how pods are adopted after a restart),
``wrapper.py`` (the parent each container runs under), ``volumes.py`` (volumes and mounts
without a mount namespace), ``launching.py`` (command, env and enforced limits),
``probing.py`` and ``backoff.py`` (Kubernetes' probe and restart semantics).

Not isolated, because processes are not containers: every pod shares the node's network
(``podIP`` is 127.0.0.1, ports may clash), file system and user; ``readOnly`` mounts, CPU
limits, ``emptyDir`` size and medium are not enforced. Not supported (the container reports
CreateContainerConfigError instead): sidecar init containers, grpc probes, volume types
other than configMap, secret, downwardAPI, projected (without serviceAccountToken),
emptyDir and hostPath. Ignored: lifecycle hooks, ``activeDeadlineSeconds``, readiness
gates, log rotation. A process that leaves its process group (``setsid``) escapes
supervision.
"""

from .backoff import BackoffPolicy
from .images import ImageSpec, default_images, python_image
from .runtime import ProcessRuntime, StatusCallback
from .sources import CONFIGMAP, SECRET, Resolver

__all__ = [
    "CONFIGMAP",
    "SECRET",
    "BackoffPolicy",
    "ImageSpec",
    "ProcessRuntime",
    "Resolver",
    "StatusCallback",
    "default_images",
    "python_image",
]
