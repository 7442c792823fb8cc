"""The built-in judge of the shapes data: shipped weights, its interface, and that it tells
shapes and colours apart on images it never saw (another data seed)."""

from __future__ import annotations

import pytest
import torch

from diffuse_cli.data.shapes import Shapes
from diffuse_cli.evaluate.features.builtin import (
    CLASS_NAMES,
    FEATURE_DIM,
    load_builtin_extractor,
    shapes_targets,
)


@pytest.fixture(scope="module")
def judge():
    return load_builtin_extractor()


@pytest.fixture(scope="module")
def fresh():
    """200 shapes from a data seed that neither the judge nor any default run saw."""
    data = Shapes("test", 200, 32, 3, seed=7)
    x = torch.stack([data[i][0] for i in range(len(data))])
    return x, torch.tensor([data[i][1] for i in range(len(data))]), data._images


def test_interface_shapes_and_no_gradients(judge, fresh):
    x, _, _ = fresh
    assert judge.logits(x[:5]).shape == (5, len(CLASS_NAMES))
    assert judge.features(x[:5]).shape == (5, FEATURE_DIM)
    features, logits = judge.features_and_logits(x[:5])
    assert torch.equal(features, judge.features(x[:5])) and torch.equal(logits, judge(x[:5]))
    assert 0.5 < float(judge.features(x).pow(2).mean().sqrt()) < 2  # features of order 1
    assert not judge.training and not any(p.requires_grad for p in judge.parameters())


def test_judges_shape_and_colour_of_unseen_images(judge, fresh):
    x, labels, images = fresh
    with torch.no_grad():
        heads = judge.heads(judge.embed(x))
    assert (heads["shape"].argmax(1) == labels).float().mean() >= 0.98
    colour = shapes_targets(images)["colour"]
    assert (heads["colour"].argmax(1) == colour).float().mean() >= 0.98


def test_still_judges_slightly_noisy_images(judge, fresh):
    """Generated samples are not perfect; a little noise must not change the verdict."""
    x, labels, _ = fresh
    noisy = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(
        -1, 1
    )
    with torch.no_grad():
        assert (judge.logits(noisy).argmax(1) == labels).float().mean() >= 0.95


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 32, 32), torch.zeros(3, 32, 32)]
)
def test_refuses_other_shapes(judge, bad):
    with pytest.raises(ValueError, match=r"takes images \[B, 3, 32, 32\] in \[-1, 1\]"):
        judge.features(bad)


def test_refuses_uint8(judge):
    with pytest.raises(ValueError, match="float images"):
        judge.logits(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
