"""The threshold sweep of ``orbiter demo``'s joint-inference part, and its plot.

The sweep runs :class:`orbiter.collab.JointInference` in this process on the demo's two ONNX
files, the big model called directly instead of over HTTP: the same routing and the same
answers as through the workers, at a fraction of the time, for every threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .demo_joint import JointInferenceDemo

__all__ = ["LocalCloud", "accuracy_of", "plot", "sweep"]


class LocalCloud:
    """A :class:`orbiter.collab.CloudModel` answering with an estimator in this process."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def infer(self, data: Any, *, timeout: float | None = None) -> Any:
        return self.estimator.predict(data)


def accuracy_of(model: Path, x: np.ndarray, y: np.ndarray) -> float:
    """The ONNX model's accuracy alone on ``(x, y)``."""
    from orbiter.collab import OnnxEstimator

    return float(OnnxEstimator(model).evaluate((x, y))["accuracy"])


def sweep(
    edge: Path, cloud: Path, x: np.ndarray, y: np.ndarray, thresholds: Sequence[float]
) -> list[tuple[float, float, float]]:
    """``(threshold, upload ratio, joint accuracy)`` for each CrossEntropy threshold, each
    sample a call of its own as the edge worker makes it."""
    from orbiter.collab import CrossEntropy, JointInference, JointInferenceConfig, OnnxEstimator

    little, big = OnnxEstimator(edge), LocalCloud(OnnxEstimator(cloud))
    points = []
    for threshold in thresholds:
        hem = CrossEntropy(threshold_cross_entropy=threshold)
        config = JointInferenceConfig()  # nothing from the environment: no reports, no URL
        with JointInference(little, hem, cloud=big, config=config, report=False) as ji:
            finals = [ji.inference(x[i : i + 1], post_process="softmax")[1] for i in range(len(x))]
            predicted = np.array([int(np.argmax(f)) for f in finals])
            accuracy = float((predicted == y).mean())
            points.append((threshold, ji.stats.upload_ratio, accuracy))
    return points


def plot(result: JointInferenceDemo, path: Path) -> Path | None:
    """Accuracy against upload ratio as a PNG at ``path``; None without matplotlib."""
    try:  # not a pinned dependency yet: the ignores are for mypy on a machine without it
        import matplotlib  # type: ignore[import-not-found]
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt  # type: ignore[import-not-found]

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    try:
        ratios = [100 * r for _, r, _ in result.sweep]
        accuracies = [100 * a for _, _, a in result.sweep]
        ax.plot(ratios, accuracies, "o-", color="tab:blue", label="CrossEntropy router (sweep)")
        for threshold, ratio, accuracy in zip(
            [t for t, _, _ in result.sweep], ratios, accuracies, strict=True
        ):
            if threshold in (0.5, 0.8, 0.9, 0.95, 0.99):
                ax.annotate(
                    f"{threshold:g}", (ratio, accuracy), textcoords="offset points",
                    xytext=(4, -12), fontsize=8, color="tab:blue",
                )  # fmt: skip
        ends = ([0, 100], [100 * result.edge_only, 100 * result.cloud_only])
        ax.plot(*ends, "--", color="gray", label="random routing (expected)")
        ax.axhline(100 * result.cloud_only, ls=":", color="tab:green", label="cloud only")
        ax.axhline(100 * result.edge_only, ls=":", color="tab:orange", label="edge only")
        ax.plot(
            [100 * result.upload_ratio], [100 * result.joint], "*", ms=16, color="tab:red",
            label=f"through the workers (threshold {result.threshold:g})",
        )  # fmt: skip
        ax.set_xlabel("examples sent to the cloud (%)")
        ax.set_ylabel(f"accuracy on {result.samples} held-out digits (%)")
        ax.set_xlim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(
            "Joint inference on digits: accuracy against upload ratio\n"
            "sweep computed in-process with the SDK on the same ONNX models",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
