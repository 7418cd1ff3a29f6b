"""Types shared by every layer: the resources the API serves."""

from ._resources import ALL_VERBS, BUILTIN_RESOURCES, ResourceType

__all__ = ["ALL_VERBS", "BUILTIN_RESOURCES", "ResourceType"]
