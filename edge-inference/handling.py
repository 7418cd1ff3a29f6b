"""The handlers both transports call (one handler, many transports): health, metadata,
inference and the repository operations, on decoded requests. REST and gRPC only translate
their wire format to these calls and :class:`InferenceError` to their statuses."""

from __future__ import annotations

import collections
import importlib.metadata
import time
from concurrent.futures import Executor
from typing import Any

from .batching import Batcher, BatchRecord
from .errors import InferenceError, InvalidInput, ModelNotFound
from .messages import InferRequest, InferResponse, OutputTensor
from .metrics import Metrics
from .repository import ModelRepository, ModelVersion, ServedSet

__all__ = ["EXTENSIONS", "SERVER_NAME", "SERVER_VERSION", "InferenceService"]

SERVER_NAME = "orbiter"
try:
    SERVER_VERSION = importlib.metadata.version("orbiter")
except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
    SERVER_VERSION = "0.0.0"
EXTENSIONS = ("binary_tensor_data", "model_repository")


class InferenceService:
    """Answers inference protocol calls against ``repository``; owns a batcher per model."""

    def __init__(
        self,
        repository: ModelRepository,
        *,
        metrics: Metrics | None = None,
        executor: Executor | None = None,
        inline_below: float = 0.0,
        batch_history: int = 0,
    ) -> None:
        self.repository = repository
        self.metrics = metrics or Metrics()
        self._executor = executor
        self._inline_below = inline_below
        self._history = batch_history
        self._batchers: dict[str, Batcher] = {}
        self._histories: dict[str, collections.deque[BatchRecord]] = {}  # outlive the batchers
        self.ready = False  # set by the server once the repository is loaded
        self._closing = False

    # ------------------------------------------------------------------ health, metadata

    def live(self) -> bool:
        return True

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def _version(self, name: str, served: ServedSet, version: str) -> ModelVersion:
        if not version:
            return served.latest
        number = int(version) if version.isdigit() else None
        loaded = served.versions.get(number) if number is not None else None
        if loaded is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r} loaded "
                f"(serving {', '.join(served.labels)})"
            )
        return loaded

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        served = self.repository.served(name)
        return self._version(name, served, version).metadata(served.labels)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (at ``version``) serves; ModelNotFound for unknown models."""
        entry = self.repository.entry(name)
        served = entry.served
        if served is None:
            return False
        if not version:
            return True
        return version.isdigit() and int(version) in served.versions

    # ------------------------------------------------------------------------- inference

    def _batcher(self, name: str) -> Batcher:
        batcher = self._batchers.get(name)
        if batcher is None:
            repository = self.repository
            batcher = self._batchers[name] = Batcher(
                name,
                lambda: repository.current(name),
                executor=self._executor,
                metrics=self.metrics,
                inline_below=self._inline_below,
                history=self._history,
            )
            self._histories[name] = batcher.history
        return batcher

    async def infer(self, request: InferRequest, protocol: str) -> InferResponse:
        """Validates ``request`` against the version it would run on, queues it to the model's
        batcher and returns its outputs (those asked for, in that order)."""
        started = time.perf_counter()
        name = request.model
        label = request.version
        try:
            served = self.repository.served(name)
            checked = self._version(name, served, request.version)
            rows, key = checked.check(request.inputs)
            wanted = request.outputs
            if wanted is not None:
                known = checked.output_names
                for output in wanted:
                    if output.name not in known:
                        raise InvalidInput(
                            f"unknown output {output.name!r}: model {name!r} gives "
                            f"{', '.join(repr(n) for n in known)}"
                        )
            if self._closing:
                raise InferenceError("the server is stopping")
            explicit = checked.version if request.version else None
            # Always through the batcher's task, even when the model is idle: running a lone
            # request on the caller's task measured no faster, and batched less under load.
            version, arrays = await self._batcher(name).submit(
                request.inputs, rows, key, explicit, checked, request.id
            )
            label = version.label
            outputs = self._outputs(request, version, arrays)
        except InferenceError:
            self.rejected(name, label, protocol)
            raise
        self.metrics.request(name, label, protocol, True, time.perf_counter() - started)
        return InferResponse(name, label, request.id, outputs)

    def rejected(self, name: str, version: str, protocol: str) -> None:
        """Counts a failed request (transports call it for requests they could not decode)."""
        model = name if name in self._batchers or _known(self.repository, name) else ""
        # Labels a peer chooses would be new series without end: only a served version
        # keeps its own.
        current = self.repository.current(model) if model else None
        if current is None or version not in current.labels:
            version = ""
        self.metrics.request(model, version, protocol, False, 0.0)

    @staticmethod
    def _outputs(
        request: InferRequest, version: ModelVersion, arrays: list[Any]
    ) -> list[OutputTensor]:
        default = request.binary_output
        if request.outputs is None:
            return [
                OutputTensor(name, array, default)
                for name, array in zip(version.output_names, arrays, strict=True)
            ]
        by_name = dict(zip(version.output_names, arrays, strict=True))
        outputs = []
        for wanted in request.outputs:
            array = by_name.get(wanted.name)
            if array is None:  # a reload between validation and the batch dropped it
                raise InvalidInput(
                    f"model {request.model!r} version {version.version} has no output "
                    f"{wanted.name!r}"
                )
            binary = default if wanted.binary is None else wanted.binary
            outputs.append(OutputTensor(wanted.name, array, binary))
        return outputs

    def batches(self, name: str) -> list[BatchRecord]:
        """The recent batches of ``name`` (kept when the service has a ``batch_history``)."""
        return list(self._histories.get(name, ()))

    # ------------------------------------------------------------------------ repository

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    async def load(self, name: str) -> None:
        await self.repository.load(name)

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)

    async def rollback(self, name: str) -> None:
        await self.repository.rollback(name)

    async def close(self) -> None:
        """Lets every batcher finish what is queued, then stops them."""
        self._closing = True
        batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            await batcher.stop()


def _known(repository: ModelRepository, name: str) -> bool:
    try:
        repository.entry(name)
    except ModelNotFound:
        return False
    return True
