"""Types shared by every layer: the resources the API serves, and packaged CRD manifests."""

from ._resources import ALL_VERBS, BUILTIN_RESOURCES, ResourceType
from .manifests import DEVICES, RULES, load_crds

__all__ = ["ALL_VERBS", "BUILTIN_RESOURCES", "DEVICES", "RULES", "ResourceType", "load_crds"]
