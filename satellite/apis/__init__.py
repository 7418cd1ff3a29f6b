"""satellite.orbiter.io/v1alpha1 CRDs, shipped as package data.

``load_satellite_crds()`` gives the three cluster-scoped kinds that put contact plans in the
API: ``GroundStation``, ``ContactPlan`` (a satellite Node's passes, so ``kubectl get
contactplans`` shows each node's next pass) and ``SatelliteProfile`` (what a satellite Node
carries). The top layer hands them to the cloud, which installs them at start; the
``Resource`` constants address their objects through ``orbiter.orchestration.client``.
"""

from __future__ import annotations

from typing import Any

from orbiter.orchestration.apis import load_crds
from orbiter.orchestration.client import Resource

__all__ = [
    "CONTACT_PLANS",
    "GROUND_STATIONS",
    "GROUP",
    "SATELLITE_CRDS",
    "SATELLITE_PROFILES",
    "VERSION",
    "load_satellite_crds",
]

SATELLITE_CRDS = "satellite.yaml"  # the packaged manifest, beside this module
GROUP, VERSION = "satellite.orbiter.io", "v1alpha1"

GROUND_STATIONS = Resource(GROUP, VERSION, "groundstations", "GroundStation", namespaced=False)
CONTACT_PLANS = Resource(GROUP, VERSION, "contactplans", "ContactPlan", namespaced=False)
SATELLITE_PROFILES = Resource(
    GROUP, VERSION, "satelliteprofiles", "SatelliteProfile", namespaced=False
)


def load_satellite_crds() -> list[dict[str, Any]]:
    """The satellite.orbiter.io/v1alpha1 CustomResourceDefinitions: GroundStation,
    ContactPlan, SatelliteProfile."""
    return load_crds(SATELLITE_CRDS, __name__)
