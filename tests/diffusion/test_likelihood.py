"""The pieces of the bound: Gaussian KL, the discretized decoder, the prior term, bits/dim."""

import math

import pytest
import torch

from diffuse_cli.diffusion import (
    GaussianDiffusion,
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    get_betas,
    normal_kl,
    quantize,
)

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(2, 1000, generator=g, dtype=torch.float64) * 2
    lv1, lv2 = torch.randn(2, 1000, generator=g, dtype=torch.float64) * 3
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    expected = torch.distributions.kl_divergence(p, q)
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10, atol=1e-12)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mean", [-3.0, -1.0, -0.9961, -0.3, 0.0, 0.0039, 0.5, 1.0, 2.5])
@pytest.mark.parametrize("scale", [1e-5, 1e-3, 4e-3, 0.01, 0.1, 1.0, 10.0, 1e3])
def test_the_decoder_sums_to_one_over_the_256_bins(dtype, mean, scale):
    log_p = discretized_gaussian_log_likelihood(
        GRID.to(dtype), torch.tensor(mean, dtype=dtype), torch.tensor(math.log(scale), dtype=dtype)
    )
    assert torch.isfinite(log_p).all() and (log_p <= 1e-6).all()
    total = log_p.double().exp().sum().item()
    # float32 grid values sit up to 1e-10 off their level, so adjacent float32 bins overlap or
    # leave gaps that a scale of 1e-5 resolves: the computation is float64 either way.
    assert abs(total - 1) < (1e-4 if dtype == torch.float32 else 1e-10), total


def test_the_decoder_is_the_gaussian_mass_of_each_bin():
    """Against CDF differences by erfc, each taken in the tail where it has all its digits."""
    mean, scale = 0.1, 0.05
    upper, lower = (GRID + 1 / 255 - mean) / scale, (GRID - 1 / 255 - mean) / scale

    def ndtr(z):
        return 0.5 * torch.special.erfc(-z / math.sqrt(2))

    mass = torch.where(GRID > mean, ndtr(-lower) - ndtr(-upper), ndtr(upper) - ndtr(lower))
    mass[0], mass[-1] = ndtr(upper[0]), ndtr(-lower[-1])  # the open outer bins
    log_p = discretized_gaussian_log_likelihood(
        GRID,
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(math.log(scale), dtype=torch.float64),
    )
    keep = mass > 1e-250
    assert keep.sum() > 100
    torch.testing.assert_close(log_p[keep], mass[keep].log(), rtol=1e-9, atol=1e-9)


def test_the_decoder_has_finite_gradients_at_extremes():
    means, log_scales = torch.tensor([-5.0, 0.0, 0.3, 5.0]), torch.tensor([-12.0, -5.0, 0.0, 12.0])
    pairs = torch.cartesian_prod(means, log_scales)  # [16, 2]
    mean = pairs[:, :1].expand(16, 256).clone().requires_grad_()
    log_scale = pairs[:, 1:].expand(16, 256).clone().requires_grad_()
    log_p = discretized_gaussian_log_likelihood(GRID.float().expand(16, 256), mean, log_scale)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_prior_term_is_tiny(schedule):
    """L_T = KL(q(x_T | x0) || N(0, I)) for the published T = 1000 schedules, at the worst
    case x0 = +-1 (about alphas_cumprod[-1] / (2 ln 2) bits/dim)."""
    d = GaussianDiffusion(get_betas(schedule, 1000))
    x0 = torch.tensor([[-1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    prior = d.prior_bpd(x0)
    assert prior.shape == (2,) and (prior >= 0).all() and (prior < 1e-4).all(), prior


def test_bits_per_dim_and_quantize():
    nats = torch.full((3, 2, 4), math.log(2.0))
    torch.testing.assert_close(bits_per_dim(nats), torch.ones(3))
    x = torch.tensor([-1.2, -1.0, -0.99, 0.0, 0.004, 1.0, 3.0])
    q = quantize(x)
    levels = (q + 1) * 127.5
    torch.testing.assert_close(levels, levels.round())
    assert q[0] == -1 and q[-1] == 1 and (q - x.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-7
