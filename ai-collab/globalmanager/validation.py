"""Checks a JointInferenceService passes before any worker is made for it.

- both referenced ``Model`` objects exist in the service's namespace (reason
  ``ModelNotFound``);
- ``edgeWorker.hardExampleMining`` names a filter the worker SDK knows, with parameters it
  takes and values that parse (reason ``InvalidHardExampleMining``; the rules and messages
  are :func:`orbiter.collab.mining.hem_from_spec`'s, so the service is refused exactly when
  its edge worker would fail to start);
- each worker template has containers, and ``BIG_MODEL_BIND_PORT`` (if the cloud template
  sets it) is a port number (reason ``InvalidSpec``).

Every failure is a ``Failed`` condition; the spec or the Models changing triggers a new look.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .status import FAILED, Problem
from .workers import CLOUD, EDGE, bind_port, worker_spec

__all__ = ["validate"]

ModelLookup = Callable[[str], dict[str, Any] | None]


def validate(service: dict[str, Any], model: ModelLookup) -> Problem | None:
    """The first problem of ``service`` (``model(name)`` finds a Model of its namespace)."""
    namespace = (service.get("metadata") or {}).get("namespace") or "default"
    missing = []
    for kind in (EDGE, CLOUD):
        name = ((worker_spec(service, kind).get("model") or {}).get("name")) or ""
        if model(name) is None:
            missing.append(
                f'model "{name}" (the {kind} worker\'s) not found in namespace {namespace}'
            )
    if missing:
        return Problem(FAILED, "ModelNotFound", "; ".join(missing))
    hem = worker_spec(service, EDGE).get("hardExampleMining") or {}
    try:
        _check_hem(str(hem.get("name") or ""), hem.get("parameters"))
    except ValueError as exc:
        return Problem(FAILED, "InvalidHardExampleMining", f"edgeWorker.hardExampleMining: {exc}")
    for kind in (EDGE, CLOUD):
        containers = ((worker_spec(service, kind).get("template") or {}).get("spec") or {}).get(
            "containers"
        )
        if not isinstance(containers, list) or not containers:
            return Problem(
                FAILED, "InvalidSpec", f"{kind}Worker.template.spec.containers: Required value"
            )
    try:
        bind_port(service)
    except ValueError as exc:
        return Problem(FAILED, "InvalidSpec", str(exc))
    return None


def _check_hem(name: str, parameters: Any) -> None:
    # Imported on first use: the filters bring numpy, which the rest of the cloud does without.
    from ..mining import hem_from_spec

    hem_from_spec(name, parameters)
