"""The model registry: runs, versions with lineage, aliases, and verified fetches."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from orbiter.models.artifacts import ChecksumMismatch, LocalArtifactStore
from orbiter.models.registry import (
    TAG_PARENT,
    TAG_SHA256,
    TAG_SIZE,
    InvalidAlias,
    InvalidName,
    ModelNotFound,
    ModelVersionInfo,
    Registry,
    RegistryError,
)
from orbiter.models.s3storage import S3ArtifactStore

from tests.fixtures.s3 import S3Server, s3_server  # noqa: F401

EPOCHS = [
    {"loss": 1.25, "accuracy": 0.50},
    {"loss": 0.75, "accuracy": 0.80},
    {"loss": 0.25, "accuracy": 0.95},
]


def tiny_onnx(path: Path, bias: float) -> Path:
    """A real ONNX model, y = x + bias: different biases give different bytes."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    b = numpy_helper.from_array(np.full((1, 4), bias, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])], "tiny", [x], [y], initializer=[b]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    # One registry (one SQLite database, migrated once: seconds) for the whole module.
    return Registry(data_dir=tmp_path_factory.mktemp("registry"))


@dataclass(frozen=True)
class Digits:
    run_id: str
    v1: ModelVersionInfo
    v2: ModelVersionInfo
    v1_file: Path
    v2_file: Path


@pytest.fixture(scope="module")
def digits(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """Version 1 trained on digits@seed0; version 2 made from it by an incremental job."""
    files = tmp_path_factory.mktemp("digits")
    run_id = registry.log_run(
        "digits",
        params={"lr": 0.01, "epochs": 3, "model": "lenet"},
        metrics=EPOCHS,
        tags={"orbiter.job": "default/train-1"},
    )
    v1 = registry.register(
        "digits",
        tiny_onnx(files / "v1.onnx", 0.5),
        run_id=run_id,
        dataset="digits@seed0",
        job="default/train-1",
        description="first training",
    )
    v2 = registry.register(
        "digits",
        tiny_onnx(files / "v2.onnx", 0.75),
        dataset="digits@seed1",
        parent_version=1,
        job="default/il-job",
        params={"lr": 0.001, "epochs": 1, "base": "digits/1"},
        metrics={"accuracy": 0.97},
    )
    return Digits(run_id, v1, v2, files / "v1.onnx", files / "v2.onnx")


def test_log_run_records_params_and_per_epoch_metrics(registry: Registry) -> None:
    run_id = registry.log_run("runs-only", params={"lr": 0.1, "batch": 32}, metrics=EPOCHS)
    assert registry.run_metrics(run_id, "loss") == [(0, 1.25), (1, 0.75), (2, 0.25)]
    assert registry.run_metrics(run_id, "accuracy") == [(0, 0.50), (1, 0.80), (2, 0.95)]
    final = registry.log_run("runs-only", params={"lr": 0.2}, metrics={"accuracy": 0.9})
    assert registry.run_metrics(final, "accuracy") == [(0, 0.9)]
    assert final != run_id


def test_register_stores_the_file_and_tags_the_version(registry: Registry, digits: Digits) -> None:
    v1 = digits.v1
    assert (v1.name, v1.version, v1.parent_version) == ("digits", 1, None)
    assert v1.sha256 == sha256_of(digits.v1_file)
    assert v1.size == digits.v1_file.stat().st_size
    assert v1.format == "onnx"
    assert v1.dataset == "digits@seed0"
    assert v1.job == "default/train-1"
    assert v1.run_id == digits.run_id
    assert v1.description == "first training"
    assert v1.source == registry.artifacts.uri(v1.sha256)  # points at the artifact store
    assert registry.artifacts.stat(v1.sha256) is not None
    assert abs(v1.created - datetime.now(tz=UTC)) < timedelta(minutes=5)
    assert digits.v2.version == 2
    assert digits.v2.run_id not in (None, digits.run_id)  # a run made from params/metrics
    assert [v.version for v in registry.versions("digits")] == [1, 2]
    assert registry.get("digits") == registry.get("digits", version=2)  # newest by default


def test_lineage_says_which_dataset_and_parent_produced_version_2(
    registry: Registry, digits: Digits
) -> None:
    lineage = registry.lineage("digits", 2)
    assert lineage.dataset == "digits@seed1"
    assert lineage.parent_version == 1
    assert lineage.job == "default/il-job"
    assert lineage.run_id == digits.v2.run_id
    assert lineage.params == {"lr": "0.001", "epochs": "1", "base": "digits/1"}
    assert lineage.metrics == {"accuracy": 0.97}
    first = registry.lineage("digits", 1)
    assert (first.dataset, first.parent_version) == ("digits@seed0", None)
    assert first.job == "default/train-1"
    assert first.params == {"lr": "0.01", "epochs": "3", "model": "lenet"}
    assert first.metrics == {"loss": 0.25, "accuracy": 0.95}  # the last epoch's values
    assert registry.ancestry("digits", 2) == [2, 1]
    assert registry.ancestry("digits", 1) == [1]


def test_aliases_choose_what_production_serves(
    registry: Registry, digits: Digits, tmp_path: Path
) -> None:
    registry.set_alias("digits", "production", 1)
    registry.set_alias("digits", "candidate", 2)
    assert registry.get("digits", alias="production").version == 1
    assert registry.get("digits", alias="candidate").version == 2
    assert registry.get("digits", version=1).aliases == ("production",)

    served = registry.fetch("digits", alias="production", dest=tmp_path / "serve" / "model.onnx")
    assert served.read_bytes() == digits.v1_file.read_bytes()

    registry.set_alias("digits", "production", 2)  # promote the candidate
    assert registry.get("digits", version=2).aliases == ("candidate", "production")
    assert registry.get("digits", version=1).aliases == ()
    served = registry.fetch("digits", alias="production", dest=tmp_path / "serve" / "model.onnx")
    assert sha256_of(served) == digits.v2.sha256
    assert served.read_bytes() == digits.v2_file.read_bytes()
    assert sorted(p.name for p in served.parent.iterdir()) == ["model.onnx"]

    registry.delete_alias("digits", "candidate")
    with pytest.raises(ModelNotFound, match="model 'digits' has no alias 'candidate'"):
        registry.get("digits", alias="candidate")


def test_register_with_aliases_and_models_listing(registry: Registry, tmp_path: Path) -> None:
    registry.register("listed-a", tiny_onnx(tmp_path / "a1.onnx", 1.0))
    info = registry.register(
        "listed-a", tiny_onnx(tmp_path / "a2.onnx", 2.0), aliases=("candidate", "staging")
    )
    assert info.aliases == ("candidate", "staging")
    registry.register("listed-b", tiny_onnx(tmp_path / "b1.onnx", 3.0), description="b model")
    models = {m.name: m for m in registry.models()}
    assert models["listed-a"].aliases == {"candidate": 2, "staging": 2}
    assert models["listed-a"].latest_version == 2
    assert (models["listed-b"].aliases, models["listed-b"].latest_version) == ({}, 1)
    assert models["listed-b"].description is None  # a version's description, not the model's
    assert [m.name for m in registry.models()] == sorted(models)


def test_same_file_twice_is_stored_once(registry: Registry, tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "same.onnx", 4.0)
    first = registry.register("same-bytes", path)
    second = registry.register("same-bytes", path)
    assert (first.version, second.version) == (1, 2)
    assert first.sha256 == second.sha256
    assert [r.digest for r in registry.artifacts.list()].count(first.sha256) == 1


def test_unknown_names_versions_and_aliases(
    registry: Registry, digits: Digits, tmp_path: Path
) -> None:
    with pytest.raises(ModelNotFound, match="no registered model named 'nope'"):
        registry.get("nope")
    with pytest.raises(ModelNotFound, match="model 'digits' has no version 9"):
        registry.get("digits", version=9)
    with pytest.raises(ModelNotFound, match=r"model 'digits' has no alias 'staging' \(aliases: "):
        registry.fetch("digits", alias="staging", dest=tmp_path / "m.onnx")
    with pytest.raises(ModelNotFound, match="model 'digits' has no version 9"):
        registry.set_alias("digits", "production", 9)
    with pytest.raises(ModelNotFound, match="has no alias 'never-set'"):
        registry.delete_alias("digits", "never-set")
    with pytest.raises(ModelNotFound, match="no registered model named 'nope'"):
        registry.lineage("nope", 1)
    with pytest.raises(ValueError, match="not both"):
        registry.get("digits", version=1, alias="production")
    assert not (tmp_path / "m.onnx").exists()
    assert isinstance(ModelNotFound("x"), RegistryError)


@pytest.mark.parametrize(
    "alias", ["latest", "LATEST", "v1", "V12", "bad alias", "", "a.b", "x" * 256]
)
def test_invalid_aliases_are_refused_before_anything_changes(
    registry: Registry, digits: Digits, tmp_path: Path, alias: str
) -> None:
    with pytest.raises(InvalidAlias, match="alias"):
        registry.set_alias("digits", alias, 1)
    before = [v.version for v in registry.versions("digits")]
    with pytest.raises(InvalidAlias):
        registry.register("digits", tiny_onnx(tmp_path / "m.onnx", 9.0), aliases=(alias,))
    assert [v.version for v in registry.versions("digits")] == before


def test_invalid_names_and_parents(registry: Registry, digits: Digits, tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "m.onnx", 5.0)
    for name in ["a/b", "a:b", "", " x", "-x"]:
        with pytest.raises(InvalidName, match="invalid model name"):
            registry.register(name, model)
    before = len(registry.versions("digits"))
    with pytest.raises(ModelNotFound, match="model 'digits' has no version 7"):
        registry.register("digits", model, parent_version=7)
    assert len(registry.versions("digits")) == before
    with pytest.raises(RegistryError, match="is not a file"):
        registry.register("digits", tmp_path / "missing.onnx")


def test_fetch_refuses_a_corrupted_artifact(registry: Registry, tmp_path: Path) -> None:
    info = registry.register("corruptible", tiny_onnx(tmp_path / "c.onnx", 6.0))
    assert isinstance(registry.artifacts, LocalArtifactStore) and info.sha256 is not None
    stored = registry.artifacts.root / "sha256" / info.sha256.removeprefix("sha256:")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # the last byte of the bias
    stored.write_bytes(bytes(data))
    dest = tmp_path / "serve" / "model.onnx"
    with pytest.raises(ChecksumMismatch):
        registry.fetch("corruptible", version=1, dest=dest)
    assert list(dest.parent.iterdir()) == []


def test_registry_with_files_in_s3(
    registry: Registry,
    s3_server: S3Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    keys = (s3_server.access_key, s3_server.secret_key)
    store = S3ArtifactStore(s3_server.endpoint, "registry", *keys, prefix="models")
    with store:
        # The same MLflow database, another registry object in the same process.
        s3_registry = Registry(registry.tracking_uri, artifacts=store)
        model = tiny_onnx(tmp_path / "s3.onnx", 7.0)
        info = s3_registry.register(
            "on-s3", model, dataset="digits@seed0", job="default/s3-job", aliases=("production",)
        )
        assert info.source == f"s3://registry/models/sha256/{sha256_of(model)[7:]}"
        assert store.stat(sha256_of(model)) is not None
        got = s3_registry.fetch("on-s3", alias="production", dest=tmp_path / "out.onnx")
        assert got.read_bytes() == model.read_bytes()
        assert registry.get("on-s3", alias="production").sha256 == sha256_of(model)


def test_nothing_lands_in_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    other = Registry(data_dir=tmp_path / "data")
    other.register(
        "cwd-check", tiny_onnx(tmp_path / "m.onnx", 8.0), params={"a": 1}, metrics=EPOCHS
    )
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "data" / "mlflow.db").is_file()


def test_a_server_refusing_file_sources_gets_a_run_artifact(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an MLflow tracking server answers for a file: source outside any run's artifact
    # directory (mlflow.server.handlers._validate_source_run), played by the SQL store here.
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    own = Registry(registry.tracking_uri, data_dir=tmp_path / "data")
    create = own._client.create_model_version

    def like_a_server(name: str, source: str, *args: Any, **kwargs: Any) -> Any:
        if source.startswith("file:"):
            raise MlflowException(
                f"Invalid model version source: '{source}'. To use a local path as a model "
                "version source, the run_id request parameter has to be specified",
                error_code=INVALID_PARAMETER_VALUE,
            )
        return create(name, source, *args, **kwargs)

    monkeypatch.setattr(own._client, "create_model_version", like_a_server)
    model = tiny_onnx(tmp_path / "served.onnx", 9.5)
    info = own.register("refused-source", model, dataset="d")
    assert info.source == f"runs:/{info.run_id}/model/served.onnx"
    assert info.sha256 == sha256_of(model)  # still what fetch verifies
    assert own.fetch("refused-source", dest=tmp_path / "f.onnx").read_bytes() == model.read_bytes()
    logged = list((tmp_path / "data" / "mlruns").rglob("served.onnx"))
    assert [p.read_bytes() for p in logged] == [model.read_bytes()]


def test_versions_from_rest_are_normalised() -> None:
    # Over REST a version arrives as the protobuf string field; the SQL store gives ints.
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.protos import model_registry_pb2 as pb
    from orbiter.models.registry import _version_info

    tags = {TAG_SHA256: "sha256:" + "0" * 64, TAG_SIZE: "12", TAG_PARENT: "2"}
    mv = ModelVersion.from_proto(
        pb.ModelVersion(
            name="m",
            version="3",
            creation_timestamp=1_700_000_000_000,
            source="s3://b/k",
            tags=[pb.ModelVersionTag(key=k, value=v) for k, v in tags.items()],
            aliases=["production"],
        )
    )
    assert mv.version == "3"  # really the REST shape
    info = _version_info(mv)
    assert (info.version, info.parent_version, info.size) == (3, 2, 12)
    assert info.aliases == ("production",)
    assert info.created == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert info.dataset is None and info.job is None and info.run_id is None


def test_mlflow_telemetry_is_off(registry: Registry) -> None:
    # Importing the registry opts out (unless the operator chose): no telemetry client, so no
    # thread phoning home. mlflow reads the variable when it is first imported.
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY
    from mlflow.telemetry import get_telemetry_client

    assert MLFLOW_DISABLE_TELEMETRY.get() is True
    assert get_telemetry_client() is None
