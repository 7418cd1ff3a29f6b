"""The hook through which a layer above collab vets where the global manager places a worker.

The global manager knows pods, nodes and resource requests; it does not know that a node is a
satellite with a daily downlink, an energy budget and a per-frame deadline. A layer that does
(``orbiter.satellite``) plugs in a :data:`PlacementAdvisor`: before a worker's Deployment is
written for a node, the controller asks it, and either refuses the placement with the
advisor's reason or places the worker with the advisor's environment merged in. The hook is
typed here, in collab, so that collab never imports the layer that implements it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from orbiter.orchestration.client import Client

__all__ = ["Advice", "PlacementAdvisor"]


@dataclass(frozen=True, slots=True)
class Advice:
    """An advisor's verdict on one worker on one node.

    ``allowed``: False refuses the placement (the service shows ``reason`` as its condition,
    and no worker is created). ``env``: variables the worker's containers get (a value the
    user's template sets still wins). ``option``: a short name of what was chosen, shown with
    ``reason`` in the service's status."""

    allowed: bool
    reason: str
    env: Mapping[str, str] = field(default_factory=dict)
    option: str = ""


# (client, the service object, the node's name, the worker's role "edge"/"cloud") -> an Advice,
# or None when the advisor has no opinion (e.g. the node is not one it knows about).
PlacementAdvisor: TypeAlias = Callable[[Client, dict[str, Any], str, str], Awaitable[Advice | None]]
