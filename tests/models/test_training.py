"""Seeded training: the digits recipes' accuracies, bit-identical reruns, metrics, callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from orbiter.models.datasets import Split, load_digits_split
from orbiter.models.training import (
    DIGITS_RECIPES,
    History,
    evaluate,
    predict,
    random_shift,
    train,
    train_digits,
)
from orbiter.models.zoo import build_model
from torch import nn

pytestmark = pytest.mark.slow

Trained = dict[str, tuple[nn.Module, History, Split]]


@pytest.fixture(scope="module")
def trained() -> Trained:
    """Both digits models, trained once for this module with their recipes and seed 0."""
    return {name: train_digits(name, seed=0) for name in ("digits-edge", "digits-cloud")}


def test_recipes_reach_their_accuracies(trained: Trained) -> None:
    accuracy = {
        name: evaluate(model, split.test)["accuracy"] for name, (model, _, split) in trained.items()
    }
    assert accuracy["digits-edge"] >= 0.85
    assert accuracy["digits-cloud"] >= 0.97
    assert accuracy["digits-cloud"] > accuracy["digits-edge"]
    for name, (_, history, _) in trained.items():
        assert len(history.epochs) == DIGITS_RECIPES[name].epochs
        assert history.last["val_accuracy"] == accuracy[name]  # the held-out split
        assert history.seconds < 60


def test_same_seed_gives_identical_weights(trained: Trained) -> None:
    again, history, _ = train_digits("digits-edge", seed=0)
    first = trained["digits-edge"][0].state_dict()
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, first[name]), name
    assert history.epochs == trained["digits-edge"][1].epochs
    other, _, _ = train_digits("digits-edge", seed=1, epochs=1)
    assert not torch.equal(other.state_dict()["fc1.weight"], first["fc1.weight"])


def test_augmented_one_cycle_training_is_seeded_too() -> None:
    a, _, _ = train_digits("digits-cloud", seed=0, epochs=2)
    b, _, _ = train_digits("digits-cloud", seed=0, epochs=2)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name


def test_metrics_and_callback_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    split = load_digits_split(seed=0)
    model = build_model("digits-edge")
    calls: list[tuple[int, dict[str, float]]] = []
    history = train(
        model,
        (split.x_train, split.y_train),
        epochs=3,
        batch_size=64,
        lr=0.01,
        seed=0,
        val_data=split.test,
        progress=True,
        on_epoch=lambda epoch, metrics: calls.append((epoch, metrics)),
    )
    assert [epoch for epoch, _ in calls] == [0, 1, 2]
    assert [metrics for _, metrics in calls] == history.epochs
    for metrics in history.epochs:
        assert set(metrics) == {"loss", "accuracy", "val_loss", "val_accuracy"}
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert "train" in capsys.readouterr().err  # the tqdm bar, on stderr
    no_val = train(model, split.train, epochs=1, batch_size=64, lr=0.01, seed=0, progress=False)
    assert set(no_val.last) == {"loss", "accuracy"}
    assert capsys.readouterr().err == ""


def test_predict_and_evaluate_keep_the_mode(trained: Trained) -> None:
    model, _, split = trained["digits-cloud"]
    model.train()
    logits = predict(model, split.x_test[:7])
    assert logits.shape == (7, 10) and logits.dtype == np.float32
    metrics = evaluate(model, (split.x_test, split.y_test))
    assert set(metrics) == {"loss", "accuracy"}
    assert model.training
    model.eval()


def test_random_shift_moves_whole_images_with_zero_fill() -> None:
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    out = random_shift(1)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing falls off the edge
    assert len({tuple(o.nonzero()[0].tolist()) for o in out}) == 9  # all offsets drawn


def test_bad_arguments() -> None:
    model = build_model("digits-edge")
    x, y = np.zeros((4, 1, 8, 8), np.float32), np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="4 samples but 3 labels"):
        train(model, (x, y), epochs=1, batch_size=2, lr=0.1, seed=0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train(model, (x, y[:0]), epochs=0, batch_size=2, lr=0.1, seed=0, progress=False)
    with pytest.raises(ValueError, match="no digits recipe for 'resnet18'"):
        train_digits("resnet18")
