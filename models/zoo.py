"""Small torch models of the platform, built by name, and an honest FLOP counter.

Input convention of every model: float32 NCHW. The digits models take ``N x 1 x 8 x 8``
images of scikit-learn's ``load_digits`` scaled to [0, 1] (``pixel / 16``); ``resnet18``
takes ``N x 3 x 224 x 224``. Every model returns logits ``N x num_classes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODEL_NAMES",
    "BasicBlock",
    "DigitsCloudNet",
    "DigitsEdgeNet",
    "ResNet18",
    "build_model",
    "count_flops",
    "parameter_count",
]

DIGITS_CLASSES = 10


class DigitsEdgeNet(nn.Module):
    """Constrained edge model: 2x2 average pooling to 1x4x4 (16 features), then a tiny MLP.

    The pooling models a low-resolution edge sensor; it is part of the graph so the
    model still accepts the full 8x8 image and exports as one ONNX file.
    """

    def __init__(self, hidden: int = 32, num_classes: int = DIGITS_CLASSES) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.relu(self.fc1(self.flatten(self.pool(x)))))
        return out


class DigitsCloudNet(nn.Module):
    """Cloud model: a small CNN on the full 1x8x8 image."""

    def __init__(
        self,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        num_classes: int = DIGITS_CLASSES,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions with an identity (or 1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2015), the torchvision layout without torchvision.

    11,689,512 parameters for 1000 classes. Used untrained, as a benchmark workload.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(64, 64, 1)
        self.layer2 = self._stage(64, 128, 2)
        self.layer3 = self._stage(128, 256, 2)
        self.layer4 = self._stage(256, 512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        # torchvision's initialisation, so activations keep a sane scale without training.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "digits-edge": DigitsEdgeNet,
    "digits-cloud": DigitsCloudNet,
    "resnet18": ResNet18,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, *, seed: int | None = 0, **kw: Any) -> nn.Module:
    """Build the model called ``name`` with weights drawn from ``seed``.

    The seed is applied in a forked RNG, so building a model leaves torch's global RNG
    untouched; ``seed=None`` draws from the global RNG instead. Extra keyword arguments go
    to the model's constructor.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}"
        ) from None
    if seed is None:
        return builder(**kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(**kw)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    return int(v[0]), int(v[1])


def _layer_flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = out.numel() * (module.in_channels // module.groups) * kh * kw
        return 2 * macs
    if isinstance(module, nn.Linear):
        return 2 * out.numel() * module.in_features
    if isinstance(module, nn.AvgPool2d | nn.MaxPool2d):
        kh, kw = _pair(module.kernel_size)
        return out.numel() * kh * kw
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        # Each output reduces about in/out elements: every input is touched once.
        return max(inp.numel(), out.numel())
    return 0


_COUNTED = (
    nn.Conv2d,
    nn.Linear,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``model`` on a zero tensor of ``input_shape`` (with batch).

    Counted by forward hooks, so any model built from these layers is counted honestly:
    Conv2d and Linear count 2 FLOPs per multiply-accumulate (2 x MACs; bias adds are not
    counted); pooling counts one FLOP per element of each window. Activations, batch norm
    and residual additions are not counted: they are a small share of a conv net.
    """
    total = 0

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        nonlocal total
        total += _layer_flops(module, args[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def parameter_count(model: nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
