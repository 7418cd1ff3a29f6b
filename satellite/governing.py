"""The compute governor: on-board jobs run only when the battery can carry them.

Energy, not FLOPS, bounded BUPT-1's computing (satellite.md §1.4), so a job that would take
the battery below its floor (as ``PowerModel.can_run`` foresees, scheduled radio passes
included) waits for ``earliest_start``: it is deferred, never dropped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .clock import EventLoop, Timer
from .power import DAY, PowerModel

__all__ = ["ComputeGovernor", "Job"]


@dataclass(eq=False)
class Job:
    name: str
    device: str
    duration_s: float
    submitted: float
    callback: Callable[[Job], None] | None = None
    started: float | None = None
    finished: float | None = None
    deferrals: int = 0


class ComputeGovernor:
    """Runs compute jobs one at a time per device, only when the battery can carry them.

    A job that would breach the floor waits (FIFO per device) until ``earliest_start``, or the
    next sunrise if none is in the horizon; it is deferred, never dropped."""

    def __init__(self, model: PowerModel, loop: EventLoop, *, horizon_s: float = 2 * DAY) -> None:
        # deferrals: energy holds; Job.deferrals: how many holds that job waited through
        self.model = model
        self.loop = loop
        self.horizon_s = horizon_s
        self._queues: dict[str, deque[Job]] = {d: deque() for d in model.config.devices}
        self._running: dict[str, Job] = {}
        self._wakes: dict[str, Timer] = {}
        self._seq = 0
        self.deferrals = 0
        self.submitted: list[Job] = []
        self.completed: list[Job] = []

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def running(self) -> list[Job]:
        return list(self._running.values())

    def submit(
        self,
        job_name: str,
        device: str,
        duration_s: float,
        callback: Callable[[Job], None] | None = None,
    ) -> Job:
        if device not in self._queues:
            raise ValueError(f"unknown device {device!r}; known: {sorted(self._queues)}")
        if not duration_s >= 0:
            raise ValueError(f"duration_s must be >= 0, got {duration_s}")
        job = Job(job_name, device, duration_s, self.loop.now, callback)
        if device in self._wakes:  # the device is held back for energy: so is this job
            job.deferrals += 1
        self.submitted.append(job)
        self._queues[device].append(job)
        self._pump(device)
        return job

    def _pump(self, device: str) -> None:
        queue = self._queues[device]
        if device in self._running or device in self._wakes or not queue:
            return
        now = self.loop.now
        self.model.advance(now)
        job = queue[0]
        if self.model.can_run(device, job.duration_s, at=now):
            queue.popleft()
            self._start(job, now)
            return
        self.deferrals += 1
        for waiting in queue:
            waiting.deferrals += 1
        when = self.model.earliest_start(
            device, job.duration_s, after=now, horizon_s=self.horizon_s
        )
        if when is None:
            when = self.model.next_sunrise(now)
            if math.isinf(when):
                when = now + self.model.config.orbit_period_s
        self._wakes[device] = self.loop.call_at(max(when, now + 1e-3), lambda: self._wake(device))

    def _wake(self, device: str) -> None:
        del self._wakes[device]
        self._pump(device)

    def _start(self, job: Job, now: float) -> None:
        self._seq += 1
        key = f"job:{job.name}#{self._seq}"
        job.started = now
        self._running[job.device] = job
        self.model.set_activity(key, job.device, True, at=now)
        self.loop.call_at(now + job.duration_s, lambda: self._finish(job, key))

    def _finish(self, job: Job, key: str) -> None:
        now = self.loop.now
        self.model.clear_activity(key, at=now)
        job.finished = now
        del self._running[job.device]
        self.completed.append(job)
        if job.callback is not None:
            job.callback(job)
        self._pump(job.device)
