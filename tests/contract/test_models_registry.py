"""Every registered model honours the builder signature and the feature contract (see kdkit.models.base)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from kdkit.models import create_model, default_stages
from kdkit.registry import MODELS
from kdkit.taps import probe_shapes, resolve_module

NAMES = MODELS.names()
INPUTS = [(3, 32), (1, 28)]  # CIFAR and MNIST shapes
NUM_CLASSES = 7  # not 10 or 100, so a hard-coded head would show


def test_registry_has_the_cifar_zoo() -> None:
    expected = {"resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
                "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16",
                "vgg19", "mobilenetv2", "shufflenetv1", "shufflenetv2", "mlp", "cnn", "cnn_teacher", "cnn_student"}
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builder_signature(name: str) -> None:
    params = inspect.signature(MODELS.get(name)).parameters
    assert [params[p].default for p in ("num_classes", "in_channels", "image_size")] == [10, 3, 32]
    assert MODELS.entries()[NAMES.index(name)].description


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Many tiny ops at batch 2: with two OpenMP threads on a busy 2-core machine each op waits for a core (a
    # resnet110 forward measured 13 s instead of 0.3 s). One thread keeps this file at a few seconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_contract(name: str, model: nn.Module, channels: int, size: int) -> None:
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
        torch.testing.assert_close(model(x), logits)

    stages = model.kd_stages
    assert isinstance(stages, tuple) and stages and all(isinstance(s, str) for s in stages)
    assert default_stages(model) == list(stages)
    assert isinstance(resolve_module(model, "fc"), nn.Linear) and model.fc.out_features == NUM_CLASSES
    assert not list(resolve_module(model, "embed").parameters())  # a tap point, not a layer

    shapes = probe_shapes(model, x, [*stages, "embed", "fc"])
    assert shapes["embed"] == (2, model.fc.in_features)
    assert shapes["fc"] == (2, NUM_CLASSES)
    maps = [shapes[s] for s in stages]
    assert all(m[0] == 2 for m in maps)
    if all(len(m) == 4 for m in maps):  # conv nets: spatial size shrinks along the stages, never grows
        sides = [m[2] for m in maps]
        assert sides == sorted(sides, reverse=True) and sides[-1] < sides[0] <= size, (name, sides)
        assert feats.dim() == 4 and feats.shape[0] == 2 and feats.shape[2] <= sides[-1]
    else:  # the MLP: hidden activations
        assert all(len(m) == 2 for m in maps) and feats.shape == (2, model.fc.in_features)


@pytest.mark.parametrize("name", NAMES)
def test_feature_contract_cifar_and_mnist_shapes(name: str) -> None:
    torch.manual_seed(0)
    for channels, size in INPUTS:
        model = create_model(name, num_classes=NUM_CLASSES, in_channels=channels, image_size=size).eval()
        _check_contract(name, model, channels, size)

    # 8x8 inputs (sklearn digits) work too, thanks to global average pooling (the MLP is sized by image_size).
    small = create_model(name, 3, 1, 8) if name == "mlp" else model
    with torch.no_grad():
        assert small(torch.randn(2, 1, 8, 8)).shape[0] == 2

    # One training step reaches every parameter (no dead branch, no detached stage).
    model.train()
    model(torch.randn(2, 1, 28, 28)).logsumexp(1).mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert not dead, f"{name}: parameters without gradient: {dead[:5]}"
