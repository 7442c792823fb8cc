"""The CPU dropout of the UNet: the keep rule, its statistics, gradients, layouts and seeding."""

import math

import pytest
import torch

from diffuse_cli.models.dropout import Dropout, dropout, random_int32_like


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_each_element_is_kept_below_the_threshold_and_scaled(p):
    """An element is kept exactly when its 32-bit draw is below round((1 - p) 2^32) - 2^31 (the
    draws re-made from the same seed), and a kept element is x / (1 - p)."""
    x = torch.randn(6, 5, 7, 9, dtype=torch.float64)
    torch.manual_seed(3)
    out = dropout(x, p)
    torch.manual_seed(3)
    keep = random_int32_like(x) < round((1 - p) * 2**32) - 2**31
    assert torch.equal(out != 0, keep)
    assert torch.allclose(out[keep], x[keep] / (1 - p), rtol=1e-15, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_keep_rate_and_mean_match_p(p):
    """Over 2^22 elements the kept fraction is 1 - p and the mean of dropout(1) is 1, both within
    5 standard errors."""
    torch.manual_seed(0)
    n = 2**22
    out = dropout(torch.ones(n), p)
    kept = (out != 0).double().mean().item()
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(out.double().mean().item() - 1) < 5 * math.sqrt(p / (1 - p) / n)


def test_neighbouring_elements_are_independent():
    """Two elements come from the halves of one 64-bit draw; their keep decisions (and those of
    elements further apart) are uncorrelated."""
    torch.manual_seed(1)
    n = 2**21
    keep = (dropout(torch.ones(n), 0.5) != 0).double()
    bound = 5 / math.sqrt(n)
    for lag in (1, 2, 3):
        corr = torch.corrcoef(torch.stack([keep[:-lag], keep[lag:]]))[0, 1].item()
        assert abs(corr) < bound, lag
    halves = keep.view(-1, 2)  # the two int32 halves of each int64 word
    assert abs(torch.corrcoef(halves.T)[0, 1].item()) < 5 / math.sqrt(n / 2)


def test_every_bit_of_the_draws_is_uniform():
    torch.manual_seed(2)
    bits = random_int32_like(torch.empty(2**20))
    for k in range(32):
        ones = ((bits >> k) & 1).double().mean().item()
        assert abs(ones - 0.5) < 5 * 0.5 / math.sqrt(bits.numel()), k


def test_gradient_is_the_scaled_mask():
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    torch.manual_seed(4)
    out = dropout(x, 0.25)
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, (out != 0).float() / 0.75)


def test_identity_when_not_training_or_p_is_zero_and_zero_when_p_is_one():
    x = torch.randn(3, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="must be in"):
            dropout(x, bad)


def test_same_seed_same_mask_and_fresh_draws_otherwise():
    x = torch.ones(64, 64)
    torch.manual_seed(5)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.5), a)
    assert not torch.equal(a, b)


def test_layout_and_dtype_are_kept():
    """A channels_last input gets a channels_last output (no layout change between
    convolutions); bf16 stays bf16; a non-dense view works."""
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    assert dropout(x, 0.2).is_contiguous(memory_format=torch.channels_last)
    assert dropout(x.bfloat16(), 0.2).dtype == torch.bfloat16
    view = torch.randn(4, 6, 7)[:, 1:5]
    out = dropout(view, 0.2)
    kept = out != 0
    assert torch.allclose(out[kept], view[kept] / 0.8)


def test_module_follows_train_and_eval():
    layer = Dropout(0.5)
    x = torch.ones(1000)
    assert (layer(x) == 0).any()
    assert layer.eval()(x) is x
    assert "p=0.5" in repr(layer)


def test_the_unet_uses_it():
    from diffuse_cli.models.unet import UNet

    net = UNet(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, dropout=0.1)
    layers = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert layers and all(isinstance(m, Dropout) and m.p == 0.1 for m in layers)


def test_compiles_to_the_compilers_own_dropout():
    """Under torch.compile the fused dropout of the compiler is used (the int64-halves view does
    not trace); masks stay fresh from call to call."""
    fn = torch.compile(lambda x: dropout(x, 0.5))
    x = torch.ones(4096)
    a, b = fn(x), fn(x)
    assert set(a.unique().tolist()) == {0.0, 2.0} and not torch.equal(a, b)


def test_a_tiny_p_keeps_everything():
    """Below p = 2^-33 the threshold would pass int32's maximum; it is capped there."""
    torch.manual_seed(6)
    out = dropout(torch.ones(4096), 1e-10)
    assert (out != 0).all()
