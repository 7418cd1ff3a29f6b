"""Dynamic batching, one :class:`Batcher` per model: validated requests queue up; whenever
the model's session is idle the batcher takes what is queued (up to ``max_batch_size`` rows,
never more), concatenates it along the batch dim, runs one ``session.run`` and hands each
request its rows of the outputs.

Version pinning: a batch is formed against one snapshot of the model's served set (read once
per batch), and every request in it resolves to the same :class:`ModelVersion`, whose session
then runs the whole batch. A reload swaps the served set between batches, so each answer
comes from the old or the new version and a batch never mixes them; a batch already formed
finishes on the version it pinned, whatever is served by then.

With ``max_queue_delay`` 0 (the default, Triton's semantics) an idle model runs a request at
once; requests arriving while it is busy form the next batch. A positive delay lets the first
queued request wait up to that long for the batch to fill."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import InferenceError, InvalidInput, ModelUnavailable
from .metrics import Metrics
from .repository import ModelVersion, ServedSet

__all__ = ["BatchRecord", "Batcher", "Result"]

log = logging.getLogger(__name__)

_ORT_INVALID_ARGUMENT: type[Exception] = ort.capi.onnxruntime_pybind11_state.InvalidArgument
Result = tuple[ModelVersion, list[np.ndarray]]  # who ran it, its outputs in output_names order
_SMOOTHING = 0.2  # weight of the latest run in the moving average of session.run times


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch as it ran: which version ran it, its rows and its requests' ids."""

    batch_id: int
    version: int
    rows: int
    request_ids: tuple[str | None, ...]


class _Pending:
    __slots__ = ("checked", "enqueued", "feed", "future", "key", "request_id", "rows", "version")

    def __init__(
        self,
        feed: dict[str, np.ndarray],
        rows: int,
        key: tuple[Any, ...],
        version: int | None,
        checked: ModelVersion,
        request_id: str | None,
        future: asyncio.Future[Result],
        enqueued: float,
    ) -> None:
        self.feed = feed
        self.rows = rows
        self.key = key  # requests concatenate only with equal keys (non-batch dims)
        self.version = version  # asked for explicitly, or None: whatever is latest then
        self.checked = checked  # the version it was validated against
        self.request_id = request_id
        self.future = future
        self.enqueued = enqueued

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Batcher:
    """Batches requests to model ``name``; ``source`` returns what the model serves now.
    ``session.run`` goes to ``executor`` unless its moving-average time is below
    ``inline_below`` seconds, then it runs on the loop (a thread hop costs more than a tiny
    model's run). ``history`` > 0 keeps that many :class:`BatchRecord` for inspection."""

    def __init__(
        self,
        name: str,
        source: Callable[[], ServedSet | None],
        *,
        executor: Executor | None,
        metrics: Metrics,
        inline_below: float = 0.0,
        history: int = 0,
    ) -> None:
        self.name = name
        self._source = source
        self._executor = executor
        self._metrics = metrics
        self._inline_below = inline_below
        self.history: collections.deque[BatchRecord] = collections.deque(maxlen=history or None)
        self._keep_history = history > 0
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._batches = 0
        self._forming: list[_Pending] = []  # taken off the queue, not answered yet
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_forever(), name=f"batcher:{name}")

    def submit(
        self,
        feed: dict[str, np.ndarray],
        rows: int,
        key: tuple[Any, ...],
        version: int | None,
        checked: ModelVersion,
        request_id: str | None = None,
    ) -> asyncio.Future[Result]:
        """Queues a validated request; the future resolves to (version that ran it, outputs)."""
        if self._closing:
            raise ModelUnavailable("the server is stopping")
        future: asyncio.Future[Result] = self._loop.create_future()
        self._queue.append(
            _Pending(feed, rows, key, version, checked, request_id, future, self._loop.time())
        )
        self._queued_rows += rows
        self._wake.set()
        return future

    async def stop(self) -> None:
        """Runs what is queued, then ends; submits fail from now on."""
        self._closing = True
        self._wake.set()
        await self._task

    # ------------------------------------------------------------------------- the loop

    async def _run_forever(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            served = self._source()
            if served is None:
                self._fail_all(ModelUnavailable(f"model {self.name!r} is not loaded"))
                continue
            if served.max_queue_delay > 0 and not self._closing:
                await self._fill(served)
                refreshed = self._source()  # it may have changed while waiting
                if refreshed is None:
                    continue
                served = refreshed
            try:
                batch, version = self._form(served)
                if batch:
                    await self._execute(version, batch)
            except Exception as exc:  # a bug here must neither stop the model nor hang anyone
                log.exception("batcher %s: batch failed", self.name)
                error = InferenceError(f"internal error: {exc}")
                for pending in self._forming:
                    pending.fail(error)
            self._forming = []

    async def _fill(self, served: ServedSet) -> None:
        """Waits until enough rows are queued or the first request's delay is up."""
        deadline = self._queue[0].enqueued + served.max_queue_delay
        while self._queued_rows < served.batch_target and not self._closing:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return

    def _fail_all(self, error: InferenceError) -> None:
        while self._queue:
            self._queue.popleft().fail(error)
        self._queued_rows = 0

    def _resolve(self, pending: _Pending, served: ServedSet) -> ModelVersion | None:
        if pending.version is None:
            return served.latest
        return served.versions.get(pending.version)

    def _admit(self, pending: _Pending, version: ModelVersion) -> bool:
        """Whether ``pending`` may run on ``version``: re-validated if it was checked against
        another version whose inputs differ (a reload between its arrival and its batch)."""
        if pending.checked is version or (
            pending.checked.inputs == version.inputs
            and pending.checked.max_batch_size == version.max_batch_size
        ):
            return True
        try:
            _, pending.key = version.check(pending.feed)
        except InvalidInput as exc:
            pending.fail(InvalidInput(f"model {self.name!r} version {version.version}: {exc}"))
            return False
        return True

    def _form(self, served: ServedSet) -> tuple[list[_Pending], ModelVersion]:
        """The next batch, all pinned to the version the first queued request resolves to."""
        queue = self._queue
        first = queue.popleft()
        self._queued_rows -= first.rows
        self._forming = batch = [first]
        version = self._resolve(first, served)
        if first.future.done():  # its client went away
            return [], served.latest
        if version is None:
            first.fail(
                ModelUnavailable(
                    f"model {self.name!r} version {first.version} is no longer served "
                    f"(serving {', '.join(served.labels)})"
                )
            )
            return [], served.latest
        if not self._admit(first, version):
            return [], version
        limit = version.max_batch_size
        if limit > 0 and queue:
            rows = first.rows
            rest = list(queue)
            queue.clear()
            for pending in rest:
                if (
                    rows + pending.rows <= limit
                    and pending.key == first.key
                    and self._resolve(pending, served) is version
                    and not pending.future.done()
                ):
                    self._queued_rows -= pending.rows
                    if self._admit(pending, version):
                        batch.append(pending)
                        rows += pending.rows
                else:
                    queue.append(pending)
        return batch, version

    async def _execute(self, version: ModelVersion, batch: list[_Pending]) -> None:
        started = self._loop.time()
        if len(batch) == 1:
            feed = batch[0].feed
        else:
            feed = {n: np.concatenate([p.feed[n] for p in batch]) for n in batch[0].feed}
        try:
            outputs = await self._run(version, feed)
        except Exception as exc:
            if len(batch) > 1:  # find the request at fault: the others must not fail with it
                for pending in batch:
                    await self._execute(version, [pending])
                return
            # onnxruntime's InvalidArgument: the values were wrong (an index out of range...)
            kind = InvalidInput if isinstance(exc, _ORT_INVALID_ARGUMENT) else InferenceError
            batch[0].fail(kind(f"model {self.name!r} version {version.version} failed: {exc}"))
            return
        rows = sum(p.rows for p in batch)
        self._batches += 1
        if self._keep_history:
            ids = tuple(p.request_id for p in batch)
            self.history.append(BatchRecord(self._batches, version.version, rows, ids))
        self._metrics.batch(self.name, version.label, rows, [started - p.enqueued for p in batch])
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_result((version, outputs))
            return
        for output, name in zip(outputs, version.output_names, strict=True):
            if output.shape[:1] != (rows,):
                error = InferenceError(
                    f"model {self.name!r} output {name!r} has shape {list(output.shape)}, "
                    f"not {rows} rows: it cannot be split back into the batch's requests"
                )
                for pending in batch:
                    pending.fail(error)
                return
        start = 0
        for pending in batch:
            stop = start + pending.rows
            if not pending.future.done():
                pending.future.set_result((version, [o[start:stop] for o in outputs]))
            start = stop

    async def _run(self, version: ModelVersion, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        estimate = version.run_seconds
        if estimate is not None and estimate < self._inline_below:
            outputs, seconds = _timed_run(version, feed)
        else:
            outputs, seconds = await self._loop.run_in_executor(
                self._executor, _timed_run, version, feed
            )
        version.run_seconds = (
            seconds if estimate is None else estimate + _SMOOTHING * (seconds - estimate)
        )
        return outputs


def _timed_run(
    version: ModelVersion, feed: dict[str, np.ndarray]
) -> tuple[list[np.ndarray], float]:
    start = time.perf_counter()
    outputs: list[np.ndarray] = version.session.run(version.output_names, feed)
    return outputs, time.perf_counter() - start
