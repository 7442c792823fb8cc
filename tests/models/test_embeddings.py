"""The sinusoidal timestep embedding both networks use, and model.timestep_scale in each."""

import pytest
import torch
from model_helpers import SMALL, inputs

from diffuse_cli.models import MLP, UNet, timestep_embedding


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


@pytest.mark.parametrize("net", ["unet", "mlp"])
def test_a_timestep_scale_is_the_same_network_fed_scaled_timesteps(net):
    torch.manual_seed(0)
    if net == "unet":
        scaled, plain = UNet(**SMALL, timestep_scale=0.25), UNet(**SMALL)
        x, t = inputs()
    else:
        scaled, plain = MLP(timestep_scale=0.25), MLP()
        x, t = torch.randn(2, 2), torch.tensor([7, 3999])
    for p in scaled.parameters():  # zero-initialised layers would hide any difference
        torch.nn.init.normal_(p, std=0.2)
    plain.load_state_dict(scaled.state_dict())  # the same keys: no new parameters
    torch.testing.assert_close(scaled(x, t), plain(x, t.float() * 0.25))
    assert not torch.allclose(scaled(x, t), plain(x, t))


@pytest.mark.parametrize("dim", [8, 7])
def test_timestep_embedding_is_the_improved_diffusion_formula(dim):
    """emb[:, i] = cos(t 10000^(-i/half)) and emb[:, half + i] = sin(t 10000^(-i/half)) for
    i < half = dim // 2 (improved-diffusion / ADM); an odd dim ends with a zero column."""
    t = torch.tensor([1, 37, 999])
    emb = timestep_embedding(t, dim)
    half = dim // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    args = t.double()[:, None] * freqs[None]
    assert emb.dtype == torch.float32 and emb.shape == (3, dim)
    # float32 arguments up to 999 carry an absolute error of about 999 * 2^-24
    torch.testing.assert_close(emb[:, :half].double(), torch.cos(args), rtol=0, atol=2e-4)
    torch.testing.assert_close(emb[:, half : 2 * half].double(), torch.sin(args), rtol=0, atol=2e-4)
    if dim % 2:
        assert torch.equal(emb[:, -1], torch.zeros(3))


def test_freq_shift_puts_the_lowest_frequency_at_one_over_max_period():
    """freq_shift = 1 (the TensorFlow DDPM): f_i = 10000^(-i / (half - 1)), f_{half-1} = 1e-4."""
    t = torch.tensor([3.0])
    freqs = 10000.0 ** (-torch.arange(4, dtype=torch.float64) / 3)
    expected = torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)])[None].float()
    assert torch.allclose(timestep_embedding(t, 8, freq_shift=1), expected, atol=1e-6)
