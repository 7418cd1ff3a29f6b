"""The global manager (Sedna's GM): the cloud-side controllers of the sedna.io kinds.

``orbiter cloud`` (and ``orbiter.testing``'s clouds) run them in the cloud's controller
manager, on its shared informers. They use only the ``Client`` interface, so the same code
runs against a real Kubernetes cluster (with the sedna.io CRDs installed), next to that
cluster's own controllers::

    from orbiter.collab.globalmanager import controllers
    from orbiter.orchestration.client import KubeClient
    from orbiter.orchestration.cloud import ControllerManager

    async with ControllerManager(KubeClient.from_kubeconfig(), builtin=False, extra=controllers()):
        ...

Joint inference: :class:`JointInferenceController` (see :mod:`.jointinference`), which asks
an optional :data:`PlacementAdvisor` (see :mod:`.advice`) before placing the edge worker. The local
controllers' reports become the services' ``status.metrics`` through the cloud's upstream
handlers (:func:`upstream_handlers`, for ``Cloud(upstream=...)``; see :mod:`.reports`).
"""

from __future__ import annotations

import functools

from orbiter.orchestration.cloud import ControllerFactory

from .advice import Advice, PlacementAdvisor
from .jointinference import JointInferenceController
from .reports import LocalControllerReports, upstream_handlers
from .workers import DEFAULT_LC_SERVER

__all__ = [
    "DEFAULT_LC_SERVER",
    "Advice",
    "JointInferenceController",
    "LocalControllerReports",
    "PlacementAdvisor",
    "controllers",
    "upstream_handlers",
]


def controllers(
    *, lc_server: str = DEFAULT_LC_SERVER, advisor: PlacementAdvisor | None = None
) -> list[ControllerFactory]:
    """The global manager's controllers, as factories for ``ControllerManager(extra=...)``
    or ``Cloud(controllers=...)``. ``lc_server``: the local controller URL workers get;
    ``advisor``: vets where workers go (a layer above plugs in, e.g. the satellite planner)."""
    return [functools.partial(JointInferenceController, lc_server=lc_server, advisor=advisor)]
