"""Our digits models for the joint-inference acceptance scenario (reference ``sedna.md`` §8.4
S1): ``digits-edge`` and ``digits-cloud`` trained with seed 0 and exported to ONNX."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from orbiter.models import count_flops, export_onnx, train_digits
from orbiter.models.datasets import Split

__all__ = ["DigitsModels", "accuracy", "train_and_export"]

INPUT_SHAPE = (1, 1, 8, 8)


@dataclass(frozen=True)
class DigitsModels:
    split: Split
    edge_onnx: Path
    cloud_onnx: Path
    edge_flops: int
    cloud_flops: int
    edge_logits_torch: np.ndarray  # on the held-out split, to check the ONNX estimator


def train_and_export(directory: Path, seed: int = 0) -> DigitsModels:
    """Trains both models with their recipes (seconds each) and exports them, checked."""
    edge, _, split = train_digits("digits-edge", seed=seed)
    cloud, _, _ = train_digits("digits-cloud", seed=seed)
    edge_path, cloud_path = directory / "digits-edge.onnx", directory / "digits-cloud.onnx"
    export_onnx(edge, edge_path, split.x_test[:1], check_data=split.x_test)
    export_onnx(cloud, cloud_path, split.x_test[:1], check_data=split.x_test)
    from orbiter.models.training import predict

    return DigitsModels(
        split=split,
        edge_onnx=edge_path,
        cloud_onnx=cloud_path,
        edge_flops=count_flops(edge, INPUT_SHAPE),
        cloud_flops=count_flops(cloud, INPUT_SHAPE),
        edge_logits_torch=predict(edge, split.x_test),
    )


def accuracy(results: list[np.ndarray], labels: np.ndarray) -> float:
    """Share of per-sample results (each 1 x 10 scores) whose arg-max is the label."""
    predicted = np.array([int(np.asarray(r).reshape(-1).argmax()) for r in results])
    return float((predicted == labels).mean())
