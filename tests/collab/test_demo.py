"""``orbiter demo``'s joint-inference part end to end, on fewer samples: the models trained
and registered, a cloud with the global manager and an edge node, the example manifest
applied with kubectl, the digits streamed through the edge worker, the figures and the plot."""

from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path

import pytest

from orbiter.demo_joint import run_joint_inference

pytestmark = [pytest.mark.slow, pytest.mark.kubectl]

SAMPLES = 150


def workers_running(data_dir: Path) -> list[int]:
    """PIDs of worker processes whose model is under ``data_dir``: the node's pods outlive
    the node, so only the demo deleting them first keeps them from leaking."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if b"orbiter.collab.workers" in cmdline and str(data_dir).encode() in environ:
            pids.append(int(proc.name))
    return pids


def figure(printed: str, pattern: str) -> float:
    match = re.search(pattern, printed)
    assert match, f"{pattern!r} not in the demo's output:\n{printed}"
    return float(match[1])


@pytest.mark.timeout(600)
def test_the_joint_inference_demo(tmp_path: Path) -> None:
    out = io.StringIO()
    result = run_joint_inference(tmp_path, samples=SAMPLES, out=out)
    printed = out.getvalue()
    print(printed)
    assert workers_running(tmp_path) == []

    assert "digits-edge: version 1 trained and registered" in printed
    assert "jointinferenceservice.sedna.io/digits created" in printed
    assert f"Streaming {SAMPLES} held-out digits" in printed
    # What was printed is what was measured.
    assert figure(printed, r"edge only .* accuracy +([\d.]+)%") == round(100 * result.edge_only, 2)
    assert figure(printed, r"cloud only .* accuracy +([\d.]+)%") == round(
        100 * result.cloud_only, 2
    )
    assert figure(printed, r"joint .* accuracy +([\d.]+)%") == round(100 * result.joint, 2)
    assert figure(printed, r"upload ratio ([\d.]+)%") == round(100 * result.upload_ratio, 2)
    assert figure(printed, r"p50 ([\d.]+) ms") == round(result.latency_p50_ms, 1)

    # Sane figures (S1's bounds, with room for 150 samples rather than 450).
    assert result.samples == SAMPLES and result.threshold == 0.9
    assert result.edge_only >= 0.85 and result.cloud_only >= 0.95
    assert result.joint >= result.cloud_only - 0.03
    assert result.joint > result.edge_only
    assert 0 < result.upload_ratio <= 0.35
    hard = round(result.upload_ratio * SAMPLES)
    assert result.answered_by_cloud == hard  # the cloud answered every hard example
    assert 0 < result.latency_p50_ms <= result.latency_p99_ms < 1000

    # The sweep: the threshold trades upload for accuracy from edge-only to cloud-only, and
    # in-process at 0.9 it routes and answers exactly as the workers did.
    points = {t: (ratio, acc) for t, ratio, acc in result.sweep}
    assert points[0.0] == (0.0, result.edge_only)
    assert points[1.0] == (1.0, result.cloud_only)
    ratios = [ratio for _, ratio, _ in result.sweep]
    assert ratios == sorted(ratios)
    assert points[0.9] == (result.upload_ratio, result.joint)

    if importlib.util.find_spec("matplotlib") is None:
        assert result.plot is None and "No plot: matplotlib is not installed" in printed
    else:
        assert result.plot is not None and f"Plot: {result.plot}" in printed
        assert result.plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # Run again: the models come from the registry, not from training.
    again = io.StringIO()
    run_joint_inference(tmp_path, samples=10, out=again)
    assert "digits-cloud: version 1 from the registry" in again.getvalue()
    assert "training" not in again.getvalue()
    assert workers_running(tmp_path) == []
