"""A JointInferenceService's status as Sedna shapes it: ``conditions`` is a history whose last
entry is the current state (``kubectl get ji`` prints its type), plus ``startTime``,
``active`` and ``failed``.

A new condition is appended only when the state (type and reason) changes; a changed message
rewrites the last entry in place. ``lastTransitionTime`` is when the entry was appended and
``lastHeartbeatTime`` when the controller last wrote it (only status writes refresh it: a
heartbeat of its own would make every write trigger another). The history keeps the last
``MAX_CONDITIONS`` entries. ``metrics`` belongs to whoever reports worker statistics and is
never part of what this module writes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

__all__ = ["FAILED", "MAX_CONDITIONS", "PENDING", "RUNNING", "Problem", "status_patch"]

PENDING, RUNNING, FAILED = "Pending", "Running", "Failed"
MAX_CONDITIONS = 10


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a service has no (or not its current) workers: becomes its current condition.
    ``condition`` is ``Failed`` for what the user must fix, ``Pending`` for what may resolve
    on its own (a node that has not joined yet)."""

    condition: str
    reason: str
    message: str


def _with_condition(
    conditions: list[dict[str, Any]], kind: str, reason: str, message: str, now: str
) -> list[dict[str, Any]]:
    last = conditions[-1] if conditions else None
    if last is not None and last.get("type") == kind and last.get("reason") == reason:
        if last.get("message") == message and last.get("status") == "True":
            return conditions
        return [*conditions[:-1], {**last, "status": "True", "message": message}]
    entry = {
        "type": kind,
        "status": "True",
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
        "reason": reason,
        "message": message,
    }
    return [*conditions, entry][-MAX_CONDITIONS:]


def status_patch(
    status: dict[str, Any] | None,
    condition: Problem,
    *,
    active: int,
    failed: int,
    now: str,
) -> dict[str, Any] | None:
    """The merge patch of ``status`` that records ``condition`` as the current state with
    these counts; None when the status says so already. Only the fields this controller owns
    appear in it."""
    status = status or {}
    conditions = copy.deepcopy(list(status.get("conditions") or []))
    updated = _with_condition(
        conditions, condition.condition, condition.reason, condition.message, now
    )
    patch: dict[str, Any] = {}
    if updated != conditions:
        updated[-1]["lastHeartbeatTime"] = now
        patch["conditions"] = updated
    if not status.get("startTime"):
        patch["startTime"] = now
    if status.get("active") != active:
        patch["active"] = active
    if status.get("failed") != failed:
        patch["failed"] = failed
    if patch and "conditions" not in patch and updated:
        # Something changed under the same condition: the controller vouches for it again.
        patch["conditions"] = [*updated[:-1], {**updated[-1], "lastHeartbeatTime": now}]
    return patch or None
