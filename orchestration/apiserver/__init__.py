"""The Kubernetes-compatible API server: REST verbs over the revisioned store."""

from .errors import APIError
from .handling import API, Options
from .resources import ResourceRegistry
from .serving import APIServer
from .watching import WatchEvent

__all__ = ["API", "APIError", "APIServer", "Options", "ResourceRegistry", "WatchEvent"]
