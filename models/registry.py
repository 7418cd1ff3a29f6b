"""Model registry: MLflow for versions, aliases, runs and lineage; the artifact store for files.

A registered version's file lives in the content-addressed :class:`ArtifactStore`; the MLflow
model version points at it (``source`` is the store's URI) and carries ``orbiter.*`` tags:
``sha256`` (authoritative: :meth:`Registry.fetch` downloads and verifies exactly that digest),
``size``, ``format``, ``dataset``, ``parent_version`` and ``job``. Lineage questions ("which
dataset and which parent produced version 2?") are answered from those tags and the run's
params and metrics.

Only ``MlflowClient`` is used, with explicit tracking and registry URIs, never mlflow's global
fluent state: several registries can live in one process, and nothing lands in the cwd. By
default the backend is SQLite in ``data_dir`` (``mlflow.db``, run artifacts in ``mlruns/``).
"""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifacts import ArtifactStore, LocalArtifactStore, ProgressCallback

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

# mlflow decides on telemetry when it is first imported: a client thread that phones home
# (and that the test suite would report as leaked). Opt out unless the operator chose.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = [
    "TAG_DATASET",
    "TAG_FORMAT",
    "TAG_JOB",
    "TAG_PARENT",
    "TAG_SHA256",
    "TAG_SIZE",
    "InvalidAlias",
    "InvalidName",
    "Lineage",
    "ModelNotFound",
    "ModelVersionInfo",
    "RegisteredModelInfo",
    "Registry",
    "RegistryError",
]

TAG_SHA256 = "orbiter.sha256"
TAG_SIZE = "orbiter.size"
TAG_FORMAT = "orbiter.format"
TAG_DATASET = "orbiter.dataset"
TAG_PARENT = "orbiter.parent_version"
TAG_JOB = "orbiter.job"

# Names end up in MLflow search filters and in paths: keep them boring.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# MLflow's own alias rules (mlflow.utils.validation), in ASCII: letters, digits, _ and -,
# at most 255 characters, and neither "latest" nor "v<digits>", which MLflow reserves.
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_RESERVED_ALIAS = re.compile(r"latest|[vV]\d+", re.IGNORECASE)
_MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
_MAX_METRICS_PER_BATCH = 1000
_PAGE = 1000
_client_lock = threading.Lock()


class RegistryError(Exception):
    """A registry operation failed; the message names the model, version or alias."""


class ModelNotFound(RegistryError, LookupError):
    """No such registered model, version or alias."""


class InvalidName(RegistryError, ValueError):
    """A model name the registry does not accept."""


class InvalidAlias(InvalidName):
    """An alias MLflow refuses (bad characters, too long, or reserved like "latest", "v1")."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version, with what Orbiter records about it."""

    name: str
    version: int
    aliases: tuple[str, ...]
    sha256: str | None
    size: int | None
    source: str
    dataset: str | None
    parent_version: int | None
    job: str | None
    run_id: str | None
    created: datetime
    description: str | None
    format: str | None = None


@dataclass(frozen=True)
class RegisteredModelInfo:
    """A registered model: its aliases (alias → version) and its newest version."""

    name: str
    aliases: dict[str, int]
    latest_version: int | None
    description: str | None
    created: datetime


@dataclass(frozen=True)
class Lineage:
    """What produced a version: the data, the parent model, the job and the training run."""

    dataset: str | None
    parent_version: int | None
    job: str | None
    run_id: str | None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


Metrics = Mapping[str, float] | Sequence[Mapping[str, float]]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit), at most 255 characters"
        )
    return name


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidAlias(f"invalid alias {alias!r}: use 1 to 255 letters, digits, '_' and '-'")
    if _RESERVED_ALIAS.fullmatch(alias):
        raise InvalidAlias(
            f"alias {alias!r} is reserved by MLflow ('latest' and 'v<number>' name versions)"
        )
    return alias


def _millis_to_datetime(millis: int | None) -> datetime:
    return datetime.fromtimestamp((millis or 0) / 1000, tz=UTC)


def _optional_int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _version_info(mv: ModelVersion, aliases: Sequence[str] | None = None) -> ModelVersionInfo:
    """An MLflow ModelVersion as ours; the version is an int from the SQL store but a str
    over REST, so it is normalised here (and everywhere versions are compared)."""
    tags: dict[str, str] = dict(mv.tags or {})
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        aliases=tuple(sorted(aliases if aliases is not None else (mv.aliases or []))),
        sha256=tags.get(TAG_SHA256) or None,
        size=_optional_int(tags.get(TAG_SIZE)),
        source=mv.source or "",
        dataset=tags.get(TAG_DATASET) or None,
        parent_version=_optional_int(tags.get(TAG_PARENT)),
        job=tags.get(TAG_JOB) or None,
        run_id=mv.run_id or None,
        created=_millis_to_datetime(mv.creation_timestamp),
        description=mv.description or None,
        format=tags.get(TAG_FORMAT) or None,
    )


def _new_client(tracking_uri: str, registry_uri: str) -> MlflowClient:
    with _client_lock, warnings.catch_warnings():
        # SQLAlchemy 2.1 deprecates the "noload" loader strategy that mlflow's SQL store
        # models use; it warns once, when mlflow configures its mappers on importing the store.
        warnings.filterwarnings(
            "ignore",
            message=r"The ``noload`` loader strategy is deprecated",
            category=DeprecationWarning,
            module=r"mlflow\.store\.",
        )
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)


class Registry:
    """Registered models with lineage and aliases, their files in an artifact store.

    ``Registry(data_dir=d)``: SQLite at ``d/mlflow.db``, run artifacts in ``d/mlruns``, files
    in ``LocalArtifactStore(d/"artifacts")``. ``Registry("http://mlflow:5000", artifacts=s3)``:
    a tracking server, with the files in S3.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        data_dir: Path | str | None = None,
        artifacts: ArtifactStore | None = None,
        registry_uri: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        if tracking_uri is None:
            if self.data_dir is None:
                raise ValueError("Registry needs a tracking_uri or a data_dir")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{self.data_dir / 'mlflow.db'}"
        if artifacts is None:
            if self.data_dir is None:
                raise ValueError(
                    f"a Registry on {tracking_uri} needs an artifact store: pass artifacts= "
                    "(e.g. open_store('s3://...')) or data_dir="
                )
            artifacts = LocalArtifactStore(self.data_dir / "artifacts")
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.artifacts = artifacts
        # Where new experiments keep run artifacts. Without it mlflow's SQL store would use
        # ./mlruns in whatever the cwd is; a tracking server chooses for itself.
        root = self.data_dir
        if root is None and tracking_uri.startswith("sqlite:///"):
            root = Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent
        self._artifact_root = (root / "mlruns").as_uri() if root is not None else None
        self._client = _new_client(self.tracking_uri, self.registry_uri)

    def __repr__(self) -> str:
        return f"Registry({self.tracking_uri!r}, artifacts={self.artifacts!r})"

    # -- errors ----------------------------------------------------------------------------

    @contextmanager
    def _mlflow(self, what: str) -> Iterator[None]:
        """MLflow's exceptions as ours: not-found ones as ModelNotFound, naming ``what``."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelNotFound(f"{what}: {e.message}") from e
            raise RegistryError(f"{what}: {e.message}") from e

    def _registered(self, name: str) -> RegisteredModel:
        from mlflow.exceptions import MlflowException

        _check_name(name)
        try:
            return self._client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelNotFound(f"no registered model named {name!r}") from None
            raise RegistryError(f"get model {name!r}: {e.message}") from e

    @staticmethod
    def _aliases_of(rm: RegisteredModel) -> dict[str, int]:
        return {alias: int(v) for alias, v in (rm.aliases or {}).items()}

    # -- runs ------------------------------------------------------------------------------

    def _experiment_id(self, experiment: str) -> str:
        from mlflow.exceptions import MlflowException

        with self._mlflow(f"experiment {experiment!r}"):
            found = self._client.get_experiment_by_name(experiment)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    self._client.restore_experiment(found.experiment_id)
                return str(found.experiment_id)
            location = None
            if self._artifact_root is not None:
                location = f"{self._artifact_root}/{urllib.parse.quote(experiment, safe='')}"
            try:
                return str(self._client.create_experiment(experiment, artifact_location=location))
            except MlflowException as e:  # created concurrently by someone else
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                again = self._client.get_experiment_by_name(experiment)
                if again is None:
                    raise
                return str(again.experiment_id)

    def log_run(
        self,
        experiment: str,
        params: Mapping[str, Any] | None = None,
        metrics: Metrics | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        run_name: str | None = None,
    ) -> str:
        """Record a finished training run; returns its run id.

        ``metrics`` is either final values (``{"accuracy": 0.97}``, logged at step 0) or one
        mapping per epoch (``[{"loss": 0.9}, {"loss": 0.5}]``, logged with ``step`` = epoch).
        """
        experiment_id = self._experiment_id(experiment)
        with self._mlflow(f"create a run in experiment {experiment!r}"):
            run = self._client.create_run(experiment_id, tags=dict(tags or {}), run_name=run_name)
        run_id = str(run.info.run_id)
        try:
            self._log(run_id, params or {}, metrics or {})
        except BaseException:
            with self._mlflow(f"fail run {run_id}"):
                self._client.set_terminated(run_id, "FAILED")
            raise
        with self._mlflow(f"finish run {run_id}"):
            self._client.set_terminated(run_id, "FINISHED")
        return run_id

    def _log(self, run_id: str, params: Mapping[str, Any], metrics: Metrics) -> None:
        from mlflow.entities import Metric, Param

        now = int(datetime.now(tz=UTC).timestamp() * 1000)
        epochs: Sequence[Mapping[str, float]]
        epochs = [metrics] if isinstance(metrics, Mapping) else metrics
        metric_list = []
        for step, values in enumerate(epochs):
            for key, value in values.items():
                metric_list.append(Metric(key, float(value), now, step))
        param_list = [Param(key, str(value)) for key, value in params.items()]
        with self._mlflow(f"log to run {run_id}"):
            # synchronous=True: MLflow's async logging would start a worker thread.
            for i in range(0, len(param_list), _MAX_PARAMS_PER_BATCH):
                batch = param_list[i : i + _MAX_PARAMS_PER_BATCH]
                self._client.log_batch(run_id, params=batch, synchronous=True)
            for i in range(0, len(metric_list), _MAX_METRICS_PER_BATCH):
                batch_m = metric_list[i : i + _MAX_METRICS_PER_BATCH]
                self._client.log_batch(run_id, metrics=batch_m, synchronous=True)

    def run_metrics(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """A metric's history as (step, value), in step order."""
        with self._mlflow(f"metric {key!r} of run {run_id}"):
            history = self._client.get_metric_history(run_id, key)
        return sorted((int(m.step), float(m.value)) for m in history)

    # -- registering -------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model_path: Path | str,
        *,
        run_id: str | None = None,
        dataset: str | None = None,
        parent_version: int | None = None,
        job: str | None = None,
        description: str | None = None,
        aliases: Sequence[str] = (),
        params: Mapping[str, Any] | None = None,
        metrics: Metrics | None = None,
        model_format: str = "onnx",
    ) -> ModelVersionInfo:
        """Store the file and register it as the next version of ``name``.

        The model is created if missing. With ``params``/``metrics`` and no ``run_id`` a run is
        recorded first (experiment ``name``); with a ``run_id`` they are added to that run.
        ``parent_version`` must be an existing version of the same model. ``aliases`` (e.g.
        ``("candidate",)``) point at the new version afterwards.
        """
        from mlflow.exceptions import MlflowException

        _check_name(name)
        for alias in aliases:
            _check_alias(alias)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise RegistryError(f"cannot register {name!r}: {model_path} is not a file")
        if parent_version is not None:
            self.get(name, version=parent_version)  # lineage must point at something real
        ref = self.artifacts.put_file(model_path)
        if run_id is None and (params or metrics):
            run_id = self.log_run(name, params, metrics)
        elif run_id is not None and (params or metrics):
            self._log(run_id, params or {}, metrics or {})
        with self._mlflow(f"create model {name!r}"):
            try:
                self._client.create_registered_model(name)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        tags = {TAG_SHA256: ref.digest, TAG_SIZE: str(ref.size), TAG_FORMAT: model_format}
        for key, value in ((TAG_DATASET, dataset), (TAG_PARENT, parent_version), (TAG_JOB, job)):
            if value is not None:
                tags[key] = str(value)
        with self._mlflow(f"register a version of {name!r}"):
            try:
                mv = self._client.create_model_version(
                    name, ref.uri, run_id=run_id, tags=tags, description=description
                )
            except MlflowException as e:
                # A tracking server accepts a file: source only inside a run's artifact
                # directory (and may restrict sources by regex). Then log the file as a run
                # artifact too and point source there; orbiter.sha256 stays authoritative.
                if e.error_code != "INVALID_PARAMETER_VALUE" or "source" not in e.message:
                    raise
                if run_id is None:
                    run_id = self.log_run(name)
                self._client.log_artifact(run_id, str(model_path), artifact_path="model")
                mv = self._client.create_model_version(
                    name,
                    f"runs:/{run_id}/model/{model_path.name}",
                    run_id=run_id,
                    tags=tags,
                    description=description,
                )
        version = int(mv.version)
        for alias in aliases:
            self.set_alias(name, alias, version)
        return self.get(name, version=version)

    # -- aliases -----------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` at ``version`` (moving it if it pointed elsewhere)."""
        _check_alias(alias)
        self.get(name, version=version)
        with self._mlflow(f"set alias {alias!r} of {name!r}"):
            self._client.set_registered_model_alias(name, alias, str(int(version)))

    def delete_alias(self, name: str, alias: str) -> None:
        _check_alias(alias)
        if alias not in self._aliases_of(self._registered(name)):
            raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
        with self._mlflow(f"delete alias {alias!r} of {name!r}"):
            self._client.delete_registered_model_alias(name, alias)

    # -- reading -----------------------------------------------------------------------------

    def get(
        self, name: str, version: int | None = None, alias: str | None = None
    ) -> ModelVersionInfo:
        """A version by number, by alias, or (neither given) the newest one."""
        from mlflow.exceptions import MlflowException

        if version is not None and alias is not None:
            raise ValueError("give a version or an alias, not both")
        rm = self._registered(name)
        aliases = self._aliases_of(rm)
        if alias is not None:
            _check_alias(alias)
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise ModelNotFound(f"model {name!r} has no alias {alias!r} (aliases: {known})")
            version = aliases[alias]
        elif version is None:
            numbers = [v.version for v in self.versions(name)]
            if not numbers:
                raise ModelNotFound(f"model {name!r} has no versions")
            version = max(numbers)
        try:
            mv = self._client.get_model_version(name, str(int(version)))
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelNotFound(f"model {name!r} has no version {version}") from None
            raise RegistryError(f"get version {version} of {name!r}: {e.message}") from e
        return _version_info(mv, [a for a, v in aliases.items() if v == int(version)])

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of the model, oldest first."""
        aliases = self._aliases_of(self._registered(name))
        found: list[ModelVersionInfo] = []
        token: str | None = None
        with self._mlflow(f"versions of {name!r}"):
            while True:
                page = self._client.search_model_versions(
                    f"name = '{name}'", max_results=_PAGE, page_token=token
                )
                for mv in page:
                    number = int(mv.version)
                    found.append(_version_info(mv, [a for a, v in aliases.items() if v == number]))
                token = page.token
                if not token:
                    break
        return sorted(found, key=lambda info: info.version)

    def models(self) -> list[RegisteredModelInfo]:
        """Every registered model with its aliases and newest version, by name."""
        found: list[RegisteredModelInfo] = []
        token: str | None = None
        with self._mlflow("list registered models"):
            while True:
                page = self._client.search_registered_models(max_results=_PAGE, page_token=token)
                for rm in page:
                    latest = [int(mv.version) for mv in rm.latest_versions or []]
                    found.append(
                        RegisteredModelInfo(
                            name=rm.name,
                            aliases=self._aliases_of(rm),
                            latest_version=max(latest) if latest else None,
                            description=rm.description or None,
                            created=_millis_to_datetime(rm.creation_timestamp),
                        )
                    )
                token = page.token
                if not token:
                    break
        return sorted(found, key=lambda info: info.name)

    def lineage(self, name: str, version: int) -> Lineage:
        """Which dataset, parent version, job and run produced this version."""
        info = self.get(name, version=version)
        params: dict[str, str] = {}
        metrics: dict[str, float] = {}
        if info.run_id is not None:
            with self._mlflow(f"run {info.run_id} of {name!r} version {version}"):
                run = self._client.get_run(info.run_id)
            params = dict(run.data.params)
            metrics = {key: float(value) for key, value in run.data.metrics.items()}
        return Lineage(
            dataset=info.dataset,
            parent_version=info.parent_version,
            job=info.job,
            run_id=info.run_id,
            params=params,
            metrics=metrics,
        )

    def ancestry(self, name: str, version: int) -> list[int]:
        """The version, its parent, the parent's parent... down to the root."""
        chain: list[int] = []
        current: int | None = int(version)
        while current is not None:
            if current in chain:
                raise RegistryError(f"model {name!r} has a parent cycle: {[*chain, current]}")
            chain.append(current)
            current = self.get(name, version=current).parent_version
        return chain

    # -- files -------------------------------------------------------------------------------

    def fetch(
        self,
        name: str,
        *,
        alias: str | None = None,
        version: int | None = None,
        dest: Path | str,
        on_chunk: ProgressCallback | None = None,
        max_bytes: int | None = None,
    ) -> Path:
        """Download a version's file (by alias, number, or the newest) to ``dest``, verified
        against its ``orbiter.sha256``; a verified copy already at ``dest`` is kept as is."""
        info = self.get(name, version=version, alias=alias)
        if info.sha256 is None:
            raise RegistryError(
                f"model {name!r} version {info.version} has no {TAG_SHA256} tag: "
                "it was not registered through Orbiter"
            )
        limit = info.size  # the store must not hand out more than was registered
        if max_bytes is not None:
            limit = max_bytes if limit is None else min(limit, max_bytes)
        return self.artifacts.get(info.sha256, Path(dest), on_chunk=on_chunk, max_bytes=limit)
