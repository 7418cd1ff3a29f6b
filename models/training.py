"""Seeded training: same seed, same data, same weights, bit for bit (on one machine).

Batches are drawn in-process from a seeded ``torch.Generator`` (no DataLoader workers, no
threads), and the seed is applied in a forked RNG so training leaves torch's global RNG as
it found it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .datasets import ArrayDataset, Split, load_digits_split
from .zoo import build_model

__all__ = [
    "DIGITS_RECIPES",
    "Augment",
    "Data",
    "EpochCallback",
    "History",
    "Recipe",
    "evaluate",
    "predict",
    "random_shift",
    "train",
    "train_digits",
]

Data: TypeAlias = ArrayDataset | tuple[np.ndarray, np.ndarray]
EpochCallback: TypeAlias = Callable[[int, dict[str, float]], None]
# A batch transform drawing its randomness from the given generator (so runs stay seeded).
Augment: TypeAlias = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class History:
    """Per-epoch metrics (``loss``, ``accuracy``, and ``val_*`` with validation data)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def random_shift(max_shift: int = 1) -> Augment:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with zeros."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, not {max_shift}")

    def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        s = max_shift
        padded = nn.functional.pad(x, (s, s, s, s))
        dy, dx = torch.randint(0, 2 * s + 1, (2, n), generator=generator)
        out = torch.empty_like(x)
        # One slice per offset pair rather than per sample: (2s+1)^2 copies per batch.
        for oy in range(2 * s + 1):
            for ox in range(2 * s + 1):
                mask = (dy == oy) & (dx == ox)
                out[mask] = padded[mask, :, oy : oy + h, ox : ox + w]
        return out

    return shift


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of a training run."""

    epochs: int
    batch_size: int
    lr: float
    one_cycle: bool = False
    shift: int = 0  # random_shift's max_shift; 0 for no augmentation


# Checked on the splits of seeds 0-2; each trains in seconds on two cores. Shifting the
# edge model's input would blur its 2x2-pooled view, so only the cloud model is augmented.
DIGITS_RECIPES: dict[str, Recipe] = {
    "digits-edge": Recipe(epochs=60, batch_size=32, lr=0.01),
    "digits-cloud": Recipe(epochs=30, batch_size=32, lr=0.003, one_cycle=True, shift=1),
}


class _Bar(tqdm):  # type: ignore[misc]
    # tqdm's default monitor is a thread that outlives the bar; not wanted in a library.
    monitor_interval = 0


def _arrays(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = (data.x, data.y) if isinstance(data, ArrayDataset) else data
    if len(x) != len(y):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("no samples")
    return (
        torch.as_tensor(np.asarray(x, dtype=np.float32)),
        torch.as_tensor(np.asarray(y, dtype=np.int64)),
    )


def _forward_in_batches(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def predict(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Logits of ``model`` (in eval mode) for samples ``x``, as a float32 array."""
    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
    out: np.ndarray = _forward_in_batches(model, tensor, batch_size).numpy()
    return out


def evaluate(model: nn.Module, data: Data, batch_size: int = 1024) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and ``accuracy`` (a fraction) of ``model`` on ``data``."""
    x, y = _arrays(data)
    logits = _forward_in_batches(model, x, batch_size)
    return {
        "loss": float(nn.functional.cross_entropy(logits, y)),
        "accuracy": float((logits.argmax(1) == y).double().mean()),
    }


def train(
    model: nn.Module,
    train_data: Data,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    val_data: Data | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    one_cycle: bool = False,
    augment: Augment | None = None,
) -> History:
    """Train ``model`` in place with Adam and cross-entropy; returns per-epoch metrics.

    ``loss``/``accuracy`` are the running means over the epoch's (augmented) batches.
    ``on_epoch`` is called after each epoch with the 0-based epoch number and its metrics.
    The progress bar (tqdm, on stderr) shows one tick per epoch. ``one_cycle`` warms the
    learning rate up to ``lr`` and anneals it to ~0 (OneCycleLR) instead of keeping it
    constant; ``augment`` transforms each training batch. The model is left in eval mode.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs ({epochs}) and batch_size ({batch_size}) must be >= 1")
    x, y = _arrays(train_data)
    history = History()
    started = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x) // batch_size)
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        if one_cycle
        else None
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # for stochastic layers (dropout), if a model has any
        shuffle = torch.Generator().manual_seed(seed)
        with _Bar(range(epochs), desc="train", unit="epoch", disable=not progress) as bar:
            for epoch in bar:
                model.train()
                loss_sum, correct = 0.0, 0
                for idx in torch.split(torch.randperm(len(x), generator=shuffle), batch_size):
                    xb, yb = x[idx], y[idx]
                    if augment is not None:
                        xb = augment(xb, shuffle)
                    logits = model(xb)
                    loss = nn.functional.cross_entropy(logits, yb)
                    optimizer.zero_grad(set_to_none=True)
                    torch.autograd.backward(loss)
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                    loss_sum += float(loss.detach()) * len(idx)
                    correct += int((logits.detach().argmax(1) == yb).sum())
                metrics = {"loss": loss_sum / len(x), "accuracy": correct / len(x)}
                if val_data is not None:
                    val = evaluate(model, val_data)
                    metrics |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}
                history.epochs.append(metrics)
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
    model.eval()
    history.seconds = time.perf_counter() - started
    return history


def train_digits(
    name: str, seed: int = 0, epochs: int | None = None, progress: bool = False
) -> tuple[nn.Module, History, Split]:
    """Train ``digits-edge`` or ``digits-cloud`` with its recipe on the seeded digits split.

    The same seed fixes the split, the initial weights and the batch order. The held-out
    split serves as validation data (reported only: nothing is tuned on it during a run).
    """
    if name not in DIGITS_RECIPES:
        raise ValueError(f"no digits recipe for {name!r}; known: {', '.join(DIGITS_RECIPES)}")
    recipe = DIGITS_RECIPES[name]
    split = load_digits_split(seed=seed)
    model = build_model(name, seed=seed)
    history = train(
        model,
        split.train,
        epochs=recipe.epochs if epochs is None else epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        seed=seed,
        val_data=split.test,
        progress=progress,
        one_cycle=recipe.one_cycle,
        augment=random_shift(recipe.shift) if recipe.shift else None,
    )
    return model, history, split
