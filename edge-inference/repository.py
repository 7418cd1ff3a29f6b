"""The model repository, Triton's layout: ``<root>/<model>/<version>/model.onnx`` with an
optional ``<root>/<model>/config.pbtxt``; versions may also be registered programmatically.

Each model's served versions are one immutable :class:`ServedSet`, replaced whole: a load
builds every new session first, then swaps the reference (between batches, since the batcher
reads it once per batch); the set it replaced is kept for :meth:`ModelRepository.rollback`.
A failed load leaves what is served untouched and records why."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .config import ModelConfig, TensorConfig, parse_config
from .errors import ConfigError, InvalidInput, ModelNotFound, ModelUnavailable
from .tensors import DTYPES, datatype_from_onnx

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "ModelEntry",
    "ModelRepository",
    "ModelVersion",
    "ServedSet",
    "TensorSpec",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 64  # models without a config whose first dim is symbolic
READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"

FileKey = tuple[str, int, int]  # path, mtime_ns, size: a file changed when this did


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output; ``shape`` includes the batch dim (-1) of a batched model and
    has -1 for every variable dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class ModelVersion:
    """One loaded version: its onnxruntime session and the tensors it takes and gives."""

    def __init__(
        self,
        name: str,
        version: int,
        session: Any,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        max_batch_size: int,
        file_key: FileKey,
        config: ModelConfig,
    ) -> None:
        self.name = name
        self.version = version
        self.label = str(version)
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self.max_batch_size = max_batch_size
        self.file_key = file_key
        self.config = config
        self.output_names = [o.name for o in outputs]
        self._inputs = {i.name: (i, DTYPES[i.datatype]) for i in inputs}
        self.run_seconds: float | None = None  # moving average of session.run, for inlining

    def check(self, feed: Mapping[str, np.ndarray]) -> tuple[int, tuple[Any, ...]]:
        """Validates a request's inputs against this version: (its rows in the batch dim,
        the key of the requests it can be concatenated with). Raises InvalidInput naming
        the input and what was expected against what came."""
        specs = self._inputs
        if feed.keys() != specs.keys():
            expected = ", ".join(repr(n) for n in specs)
            for name in feed:
                if name not in specs:
                    raise InvalidInput(
                        f"unexpected input {name!r}: model {self.name!r} takes {expected}"
                    )
            missing = ", ".join(repr(n) for n in specs if n not in feed)
            raise InvalidInput(f"missing input {missing}: model {self.name!r} takes {expected}")
        batched = self.max_batch_size > 0
        rows = 1
        key: list[Any] = []
        for name, array in feed.items():
            spec, dtype = specs[name]
            if array.dtype != dtype:
                got = "BYTES" if array.dtype.kind == "O" else _datatype_name(array.dtype)
                raise InvalidInput(f"input {name!r}: expected datatype {spec.datatype}, got {got}")
            shape = array.shape
            expected_shape = spec.shape
            if len(shape) != len(expected_shape) or any(
                e != -1 and e != d for e, d in zip(expected_shape, shape, strict=True)
            ):
                raise InvalidInput(
                    f"input {name!r}: expected shape {list(expected_shape)} (-1: any size), "
                    f"got {list(shape)}"
                )
            if batched:
                n = shape[0]
                if not key:
                    rows = n
                elif n != rows:
                    raise InvalidInput(
                        f"input {name!r}: batch size {n} differs from the other inputs' {rows}"
                    )
                key.append(shape[1:])
        if batched:
            if rows < 1:
                raise InvalidInput(f"batch size must be at least 1, got {rows}")
            if rows > self.max_batch_size:
                raise InvalidInput(
                    f"batch size {rows} exceeds model {self.name!r} max_batch_size "
                    f"{self.max_batch_size}"
                )
        return rows, tuple(key)

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [i.metadata() for i in self.inputs],
            "outputs": [o.metadata() for o in self.outputs],
        }


def _datatype_name(dtype: np.dtype[Any]) -> str:
    for name, known in DTYPES.items():
        if known == dtype:
            return name
    return str(dtype)


@dataclass(frozen=True, slots=True)
class ServedSet:
    """The versions a model serves, swapped as a whole; requests naming no version go to
    ``latest``."""

    versions: dict[int, ModelVersion]
    latest: ModelVersion
    max_queue_delay: float = 0.0
    batch_target: int = 1  # rows worth waiting for when max_queue_delay > 0

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.versions.values()]


@dataclass
class ModelEntry:
    """A model's state in the repository."""

    name: str
    directory: Path | None
    registered: dict[int, Path] = field(default_factory=dict)
    served: ServedSet | None = None
    previous: ServedSet | None = None
    state: str = UNAVAILABLE
    reason: str = "not loaded"
    failed: dict[int, str] = field(default_factory=dict)  # version -> why it did not load
    signature: Any = None  # what was on disk at the last load attempt
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelRepository:
    """Models under ``root`` (may be None: only registered ones), their loaded versions and
    what each serves. Sessions are built in ``executor`` (None: the loop's default)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        *,
        intra_op_threads: int | None = None,
        default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        executor: Executor | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.intra_op_threads = intra_op_threads or os.cpu_count() or 1
        self.default_max_batch_size = default_max_batch_size
        self.executor = executor
        self._entries: dict[str, ModelEntry] = {}

    # ------------------------------------------------------------------------ registering

    def add_version(self, name: str, version: int, path: str | os.PathLike[str]) -> None:
        """Registers ``path`` (an .onnx file) as ``version`` of ``name``, alongside any
        versions under the root; served from the next :meth:`load` of ``name``."""
        self._registering(name, [version]).registered[version] = Path(path)

    def set_versions(self, name: str, versions: Mapping[int, str | os.PathLike[str]]) -> None:
        """Replaces the registered versions of ``name`` by ``versions`` (e.g. the one version a
        registry alias points at); served from the next :meth:`load`, the set it replaces
        kept for :meth:`rollback`."""
        entry = self._registering(name, list(versions))
        entry.registered = {v: Path(p) for v, p in versions.items()}

    def _registering(self, name: str, versions: list[int]) -> ModelEntry:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid model name {name!r}")
        for version in versions:
            if version < 1:
                raise ValueError(f"versions are positive integers, got {version}")
        entry = self._entries.get(name)
        if entry is None:
            entry = self._entries[name] = ModelEntry(name, self._directory(name))
        return entry

    def _directory(self, name: str) -> Path | None:
        # A name comes from a peer's URL or gRPC field: one plain path segment, or nothing
        # (no "..", no "/tmp/x": the repository is the only place models load from).
        if self.root is None or name in ("", ".", "..") or "/" in name or "\\" in name:
            return None
        path = self.root / name
        return path if path.is_dir() else None

    def _discover(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    # --------------------------------------------------------------------------- querying

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {name!r}")
        return entry

    def served(self, name: str) -> ServedSet:
        """What ``name`` serves now; ModelNotFound / ModelUnavailable if nothing."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {name!r}")
        served = entry.served
        if served is None:
            raise ModelUnavailable(f"model {name!r} is not ready: {entry.reason}")
        return served

    def current(self, name: str) -> ServedSet | None:
        """What ``name`` serves now, or None (what the batcher reads once per batch)."""
        entry = self._entries.get(name)
        return entry.served if entry is not None else None

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: a row per served or failed version, else one per model
        (state and reason: why it is not served)."""
        rows: list[dict[str, str]] = []
        for name in self.names():
            entry = self._entries[name]
            served = entry.served.versions if entry.served else {}
            for number in sorted(set(served) | set(entry.failed)):
                if number in served:
                    row = {"name": name, "version": str(number), "state": READY}
                    rows.append(row | {"reason": entry.reason})  # a failed reload's reason
                elif not ready_only:
                    row = {"name": name, "version": str(number), "state": UNAVAILABLE}
                    rows.append(row | {"reason": entry.failed[number]})
            if not served and not entry.failed and not ready_only:
                rows.append(
                    {"name": name, "version": "", "state": entry.state, "reason": entry.reason}
                )
        return rows

    # ---------------------------------------------------------------------------- loading

    async def load_all(self) -> None:
        """Loads every model under the root and every registered one; failures are recorded
        (see :meth:`index`), not raised."""
        for name in sorted(set(self._discover()) | set(self._entries)):
            try:
                await self.load(name)
            except (ModelNotFound, ModelUnavailable):
                continue

    async def load(self, name: str) -> None:
        """(Re)loads ``name`` from disk and registrations per its config's version policy.
        New sessions are built before the swap; on any failure what is served stays and
        ModelUnavailable says why. ModelNotFound if the model exists nowhere."""
        entry = self._entries.get(name)
        if entry is None:
            directory = self._directory(name)
            if directory is None:
                raise ModelNotFound(f"unknown model {name!r}: no {name}/ in the repository")
            entry = self._entries[name] = ModelEntry(name, directory)
        async with entry.lock:
            entry.directory = self._directory(name)
            if entry.directory is None and not entry.registered:
                self._drop(entry, "removed from the repository")
                raise ModelNotFound(f"unknown model {name!r}: no {name}/ in the repository")
            if entry.served is None:
                entry.state = LOADING
            try:
                await self._load(entry)
            finally:
                if entry.state == LOADING:
                    entry.state = UNAVAILABLE

    async def _load(self, entry: ModelEntry) -> None:
        entry.signature = self._signature(entry)
        try:
            config = self._config(entry)
            files = self._version_files(entry, config)
            wanted = config.version_policy.select(files)
            if not files:
                raise ConfigError(
                    f"no versions: expected {entry.directory or entry.name}/<version>/"
                    f"{config.model_filename}"
                )
            if not wanted:
                raise ConfigError(
                    f"the version policy selects none of the versions present "
                    f"({', '.join(map(str, sorted(files)))})"
                )
        except ConfigError as exc:
            self._failed(entry, str(exc), {})
            raise ModelUnavailable(f"model {entry.name!r}: {exc}") from None

        reusable = {}
        for served in (entry.served, entry.previous):
            for number, loaded in (served.versions if served else {}).items():
                reusable[number, loaded.file_key] = loaded
        versions: dict[int, ModelVersion] = {}
        failed: dict[int, str] = {}
        loop = asyncio.get_running_loop()
        for number in wanted:
            path = files[number]
            key = _file_key(path)
            old = reusable.get((number, key))
            if old is not None and old.config == config:
                versions[number] = old
                continue
            try:
                versions[number] = await loop.run_in_executor(
                    self.executor, self._build, entry.name, number, path, key, config
                )
            except Exception as exc:  # onnxruntime raises its own types for bad files
                failed[number] = f"version {number}: {exc}"
        if failed:
            reason = "; ".join(failed.values())
            self._failed(entry, reason, failed)
            raise ModelUnavailable(f"model {entry.name!r} failed to load: {reason}")

        new = ServedSet(
            versions=versions,
            latest=versions[max(versions)],
            max_queue_delay=config.max_queue_delay,
            batch_target=max(
                config.preferred_batch_sizes, default=versions[max(versions)].max_batch_size
            ),
        )
        current = entry.served
        if (
            current is None
            or current.versions != new.versions
            or current.max_queue_delay != new.max_queue_delay
        ):
            entry.previous, entry.served = current, new  # the swap: one reference
        entry.state, entry.reason, entry.failed = READY, "", {}

    def _failed(self, entry: ModelEntry, reason: str, failed: dict[int, str]) -> None:
        entry.failed = failed
        if entry.served is None:
            entry.state, entry.reason = UNAVAILABLE, reason
        else:
            entry.state = READY
            entry.reason = (
                f"reload failed, still serving {', '.join(entry.served.labels)}: {reason}"
            )
        log.warning("model %s: %s", entry.name, reason)

    def _config(self, entry: ModelEntry) -> ModelConfig:
        if entry.directory is None:
            return ModelConfig()
        path = entry.directory / "config.pbtxt"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return ModelConfig()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        try:
            config = parse_config(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if config.name is not None and config.name != entry.name:
            raise ConfigError(f"{path}: name {config.name!r} is not the folder's {entry.name!r}")
        return config

    def _version_files(self, entry: ModelEntry, config: ModelConfig) -> dict[int, Path]:
        files: dict[int, Path] = {}
        if entry.directory is not None:
            for child in entry.directory.iterdir():
                if child.name.isdigit() and int(child.name) > 0:
                    path = child / config.model_filename
                    if path.is_file():
                        files[int(child.name)] = path
        files.update(entry.registered)
        return files

    def _signature(self, entry: ModelEntry) -> Any:
        """What a poll compares: the config's and each version file's (mtime, size)."""
        parts: list[Any] = []
        if entry.directory is not None and entry.directory.is_dir():
            for child in sorted(entry.directory.iterdir()):
                if child.name == "config.pbtxt" or child.name.isdigit():
                    files = sorted(child.iterdir()) if child.is_dir() else [child]
                    parts.extend((str(f), *_file_key(f)[1:]) for f in files if f.is_file())
        parts.extend((v, *_file_key(p)) for v, p in sorted(entry.registered.items()))
        return tuple(parts)

    def _build(
        self, name: str, number: int, path: Path, key: FileKey, config: ModelConfig
    ) -> ModelVersion:
        """Runs in the executor: onnxruntime parses and optimises the graph here."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        # Idle intra-op threads otherwise spin for a while after each run: on a small edge box
        # that burns the core the event loop needs (gRPC on the tiny model: 1,920 -> 3,200/s).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Fatal only: a run failing on a client's bad values is answered to that client, not
        # logged by onnxruntime to stderr at each request (and it warns about benign things).
        options.log_severity_level = 4
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return _describe(name, number, session, key, config, self.default_max_batch_size)

    async def unload(self, name: str) -> None:
        """Stops serving ``name`` and releases its sessions (in-flight batches finish)."""
        entry = self.entry(name)
        async with entry.lock:
            self._drop(entry, "unloaded")

    @staticmethod
    def _drop(entry: ModelEntry, reason: str) -> None:
        entry.served = entry.previous = None
        entry.state, entry.reason, entry.failed = UNAVAILABLE, reason, {}

    async def rollback(self, name: str) -> None:
        """Serves the version set served before the last swap again (a second rollback rolls
        forward). A poll does not undo it: polls reload only what changed on disk since."""
        entry = self.entry(name)
        async with entry.lock:
            if entry.previous is None:
                raise InvalidInput(
                    f"model {name!r} has no previously served versions to roll back to"
                )
            entry.served, entry.previous = entry.previous, entry.served
            entry.state, entry.reason, entry.failed = READY, "", {}

    async def poll(self) -> list[str]:
        """Loads what changed on disk since the last look: new models, new or rewritten
        versions, edited configs; unloads models whose folder is gone. Returns the names
        it (re)loaded or unloaded."""
        changed: list[str] = []
        for name in sorted(set(self._discover()) | set(self._entries)):
            entry = self._entries.get(name)
            if entry is not None:
                if (
                    entry.directory is not None
                    and not entry.directory.is_dir()
                    and not entry.registered
                ):
                    if entry.served is not None or entry.reason != "removed from the repository":
                        async with entry.lock:
                            self._drop(entry, "removed from the repository")
                        changed.append(name)
                    continue
                entry.directory = self._directory(name)
                if self._signature(entry) == entry.signature:
                    continue
            with contextlib.suppress(ModelNotFound, ModelUnavailable):
                await self.load(name)  # a failure is recorded on the entry, shown by index()
            changed.append(name)
        return changed


def _file_key(path: Path) -> FileKey:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def _dims(shape: list[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _describe(
    name: str, number: int, session: Any, key: FileKey, config: ModelConfig, default_max: int
) -> ModelVersion:
    """The version's tensors: from the ONNX graph, refined by the config's inputs/outputs."""
    graph_inputs = _graph_tensors(session.get_inputs(), "input")
    graph_outputs = _graph_tensors(session.get_outputs(), "output")
    everything = list(graph_inputs.values()) + list(graph_outputs.values())
    variable_first = all(len(t.shape) >= 1 and t.shape[0] == -1 for t in everything)
    if config.max_batch_size is None:
        max_batch_size = default_max if variable_first and everything else 0
    else:
        max_batch_size = config.max_batch_size
        if max_batch_size > 0 and not variable_first:
            fixed = next(t for t in everything if not t.shape or t.shape[0] != -1)
            raise ConfigError(
                f"max_batch_size {max_batch_size} needs a variable first dim on every input and "
                f"output; {fixed.name!r} has shape {list(fixed.shape)}"
            )
    batch = (-1,) if max_batch_size > 0 else ()
    inputs = _refined(graph_inputs, config.inputs, batch, "input")
    outputs = _refined(graph_outputs, config.outputs, batch, "output")
    return ModelVersion(name, number, session, inputs, outputs, max_batch_size, key, config)


def _graph_tensors(args: list[Any], kind: str) -> dict[str, TensorSpec]:
    tensors: dict[str, TensorSpec] = {}
    for arg in args:
        datatype = datatype_from_onnx(arg.type)
        if datatype is None:
            raise ConfigError(f"{kind} {arg.name!r} has type {arg.type}, which is not served")
        tensors[arg.name] = TensorSpec(arg.name, datatype, _dims(arg.shape))
    return tensors


def _refined(
    graph: dict[str, TensorSpec],
    configured: tuple[TensorConfig, ...],
    batch: tuple[int, ...],
    kind: str,
) -> tuple[TensorSpec, ...]:
    refined = dict(graph)
    for tensor in configured:
        spec = graph.get(tensor.name)
        if spec is None:
            raise ConfigError(
                f"config {kind} {tensor.name!r} is not in the model (it has {', '.join(graph)})"
            )
        if tensor.datatype is not None and tensor.datatype != spec.datatype:
            raise ConfigError(
                f"config {kind} {tensor.name!r} is {tensor.datatype}, "
                f"the model's is {spec.datatype}"
            )
        if tensor.dims is not None:
            shape = batch + tensor.dims
            if len(shape) != len(spec.shape) or any(
                -1 not in (c, g) and c != g for c, g in zip(shape, spec.shape, strict=True)
            ):
                raise ConfigError(
                    f"config {kind} {tensor.name!r} dims {list(tensor.dims)} do not fit the "
                    f"model's shape {list(spec.shape)}"
                )
            # The more specific of the two: the config may fix a symbolic dim, not free one.
            shape = tuple(g if c == -1 else c for c, g in zip(shape, spec.shape, strict=True))
            refined[tensor.name] = TensorSpec(spec.name, spec.datatype, shape)
    return tuple(refined.values())
