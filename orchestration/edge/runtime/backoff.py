"""kubelet's crash back-off for restarting containers (``CrashLoopBackOff``).

The first restart is immediate; after that a container waits ``initial`` seconds from its
last exit, doubling at every restart up to ``maximum``. A container that went ``reset_after``
seconds without being restarted starts over from no back-off (kubelet: 10 s, 300 s, and an
entry expires after twice the maximum, 10 minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float = 10.0
    maximum: float = 300.0
    reset_after: float = 600.0


@dataclass
class Backoff:
    """One container's back-off entry: the current delay (0: none yet) and when it was set."""

    delay: float = 0.0
    updated: float = 0.0

    def restart_at(self, policy: BackoffPolicy, finished_at: float, now: float) -> float:
        """The earliest time (of the runtime's clock) the container may start again."""
        if self.delay == 0.0 or now - self.updated > policy.reset_after:
            return now
        return finished_at + self.delay

    def restarted(self, policy: BackoffPolicy, now: float) -> None:
        if self.delay == 0.0 or now - self.updated > policy.reset_after:
            self.delay = policy.initial
        else:
            self.delay = min(self.delay * 2, policy.maximum)
        self.updated = now

    def to_json(self) -> dict[str, Any]:
        return {"delay": self.delay, "updated": self.updated}

    @classmethod
    def from_json(cls, data: Any) -> Backoff:
        if not isinstance(data, dict):
            return cls()
        return cls(float(data.get("delay", 0.0)), float(data.get("updated", 0.0)))


def go_duration(seconds: float) -> str:
    """As kubelet prints it: 10s, 2m40s, 5m0s, 200ms."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
