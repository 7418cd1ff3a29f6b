"""The model zoo: builders by name, shapes, FLOP counting and the edge/cloud budget."""

from __future__ import annotations

import subprocess
import sys

import orbiter.models
import pytest
import torch
from orbiter.models.zoo import (
    MODEL_NAMES,
    DigitsCloudNet,
    DigitsEdgeNet,
    ResNet18,
    build_model,
    count_flops,
    parameter_count,
)
from torch import nn

DIGITS = (1, 1, 8, 8)


def test_builders_by_name() -> None:
    assert MODEL_NAMES == ("digits-edge", "digits-cloud", "resnet18")
    assert isinstance(build_model("digits-edge"), DigitsEdgeNet)
    assert isinstance(build_model("digits-cloud"), DigitsCloudNet)
    assert isinstance(build_model("resnet18", num_classes=10), ResNet18)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'mobilenet'") as err:
        build_model("mobilenet")
    for name in MODEL_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["digits-edge", "digits-cloud"])
def test_digits_models_map_images_to_ten_logits(name: str) -> None:
    model = build_model(name)
    out = model(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 10)
    assert out.dtype == torch.float32


def test_edge_model_sees_only_the_4x4_pooled_image() -> None:
    model = build_model("digits-edge").eval()
    assert isinstance(model, DigitsEdgeNet)
    x = torch.rand(3, 1, 8, 8)
    # Moving mass inside each 2x2 cell leaves the pooled image, hence the output, unchanged.
    swapped = x.clone()
    swapped[:, :, 0::2, :], swapped[:, :, 1::2, :] = x[:, :, 1::2, :], x[:, :, 0::2, :]
    with torch.no_grad():
        torch.testing.assert_close(model(swapped), model(x))
    assert model.fc1.in_features == 16


def test_seeded_builds_are_reproducible_and_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = build_model("digits-cloud", seed=3), build_model("digits-cloud", seed=3)
    c = build_model("digits-cloud", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    pairs = zip(a.parameters(), c.parameters(), strict=True)
    assert not all(torch.equal(pa, pc) for pa, pc in pairs)


def test_count_flops_matches_a_hand_count() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),  # 1x8x8 -> 2x6x6: 72 outputs x 9 MACs = 648 MACs
        nn.MaxPool2d(2),  # 2x3x3: 18 outputs x 4 elements = 72
        nn.Flatten(),
        nn.Linear(18, 5),  # 5 outputs x 18 MACs = 90 MACs
    ).train()
    assert count_flops(model, DIGITS) == 2 * 648 + 72 + 2 * 90
    assert count_flops(model, (4, 1, 8, 8)) == 4 * (2 * 648 + 72 + 2 * 90)
    assert model.training  # the count restores the mode
    assert not model._forward_hooks and not model[0]._forward_hooks  # hooks removed


def test_grouped_convolution_and_adaptive_pool_are_counted() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 1, groups=4, bias=False), nn.AdaptiveAvgPool2d(1))
    # Depthwise 1x1: 4x8x8 outputs x 1 MAC; the pool reads each of the 256 inputs once.
    assert count_flops(model, (1, 4, 8, 8)) == 2 * 256 + 256


def test_edge_model_costs_at_most_a_tenth_of_the_cloud_model() -> None:
    edge = count_flops(build_model("digits-edge"), DIGITS)
    cloud = count_flops(build_model("digits-cloud"), DIGITS)
    assert edge == 4 * 16 + 2 * 16 * 32 + 2 * 32 * 10
    assert edge <= cloud / 10


def test_resnet18_is_resnet18_sized() -> None:
    model = build_model("resnet18").eval()
    assert parameter_count(model) == 11_689_512  # torchvision's resnet18(num_classes=1000)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()
    # 1.82 GMACs is the published figure for ResNet-18 at 224x224.
    assert count_flops(model, (1, 3, 224, 224)) == pytest.approx(2 * 1.82e9, rel=0.01)


def test_the_package_exports_every_public_name_lazily() -> None:
    assert sorted(orbiter.models.__all__) == sorted(orbiter.models._MODULE_OF)
    for name in orbiter.models.__all__:
        assert getattr(orbiter.models, name) is not None
    # The registry side must not drag torch in: an edge gateway fetches models without it.
    probe = (
        "import sys, orbiter.models as m; m.Registry, m.open_store; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
