"""Virtual time: a deterministic discrete-event loop for simulations.

Simulated days must run in seconds and repeat bit for bit, so nothing here reads the wall
clock: events are ``(time, order)`` pairs in a heap, ties broken by scheduling order.
Randomness is the callers' own, seeded (the simulator derives one generator per satellite).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["EventLoop", "Timer"]


@dataclass(order=True, slots=True)
class Timer:
    at: float
    order: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """``call_at``/``call_later`` callbacks, run in time order by ``run_until``."""

    def __init__(self, *, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[Timer] = []
        self._order = 0

    @property
    def now(self) -> float:
        return self._now

    def time(self) -> float:
        """The clock as a callable, for code that takes ``clock=``."""
        return self._now

    def call_at(self, at: float, callback: Callable[[], None]) -> Timer:
        if at < self._now:
            raise ValueError(f"cannot schedule at {at}: the clock is already at {self._now}")
        self._order += 1
        timer = Timer(at, self._order, callback)
        heapq.heappush(self._heap, timer)
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self._now + max(0.0, delay), callback)

    def run_until(self, until: float) -> int:
        """Run every event due at or before ``until``, then set the clock to ``until``.
        Returns how many callbacks ran."""
        ran = 0
        while self._heap and self._heap[0].at <= until:
            timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._now = timer.at
            timer.callback()
            ran += 1
        self._now = max(self._now, until)
        return ran
