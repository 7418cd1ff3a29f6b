"""DeviceTwin: the node's device twins, kept in its store under KubeEdge's rules
(kubeedge.md §5.3)."""

from .documents import STATES
from .handling import DeviceTwin, Publish, Upstream
from .twins import BAD_REQUEST, CONFLICT, INTERNAL, NOT_FOUND, Refusal, Twin, Version
from .upstream import SOURCE

__all__ = [
    "BAD_REQUEST",
    "CONFLICT",
    "INTERNAL",
    "NOT_FOUND",
    "SOURCE",
    "STATES",
    "DeviceTwin",
    "Publish",
    "Refusal",
    "Twin",
    "Upstream",
    "Version",
]
