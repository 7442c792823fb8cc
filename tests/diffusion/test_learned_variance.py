"""Learned variances (Nichol & Dhariwal 2021, sec. 3.1): reading the output, respacing, sampling."""

import pytest
import torch
from gaussian_oracle import GaussianOracle, WithVariance

import diffuse_cli as dc
from diffuse_cli.diffusion import GaussianDiffusion, get_betas, respace, space_timesteps
from diffuse_cli.samplers import ddim, ddpm

MU, STD = torch.tensor([0.3, -0.2, 0.1]), torch.tensor([0.4, 0.3, 0.5])


def test_learned_reads_log_sigma_from_the_second_half():
    d = GaussianDiffusion(get_betas("linear", 100), variance="learned")
    assert d.variance.channel_factor == 2
    out = torch.randn(4, 6, 5, 5)
    mean_part, log_variance = d.variance.split(d, out, torch.tensor([0, 1, 50, 99]))
    assert torch.equal(mean_part, out[:, :3]) and torch.equal(log_variance, out[:, 3:])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_learned_range_interpolates_log_beta_and_log_beta_tilde(schedule):
    """v = 1 gives beta_t, v = -1 the clipped beta~_t, v = 0 their geometric mean (eq. 15)."""
    d = GaussianDiffusion(get_betas(schedule, 100), variance="learned_range")
    t = torch.tensor([0, 1, 2, 50, 99])
    log_beta = torch.log(d.betas[t]).float()
    log_tilde = d.posterior_log_variance_clipped[t].float()
    assert log_tilde[0] == log_tilde[1]  # clipped at t = 0: beta~_0 = 0
    for v, expected in [(1.0, log_beta), (-1.0, log_tilde), (0.0, (log_beta + log_tilde) / 2)]:
        out = torch.cat([torch.zeros(5, 2), torch.full((5, 2), v)], dim=1)
        mean_part, log_variance = d.variance.split(d, out, t)
        assert mean_part.shape == (5, 2) and torch.equal(mean_part, out[:, :2])
        torch.testing.assert_close(log_variance, expected[:, None].expand(5, 2))


def test_respaced_learned_range_uses_the_respaced_tables():
    d = GaussianDiffusion(get_betas("cosine", 1000), variance="learned_range")
    sub = respace(d, space_timesteps(1000, 10, "even"))
    assert sub.variance.name == "learned_range"
    t = torch.arange(10)
    ones = torch.ones(10, 2)
    _, log_large = sub.variance.split(sub, torch.cat([ones, ones], 1), t)
    _, log_small = sub.variance.split(sub, torch.cat([ones, -ones], 1), t)
    torch.testing.assert_close(log_large[:, 0], torch.log(sub.betas).float())
    torch.testing.assert_close(log_small[:, 0], sub.posterior_log_variance_clipped.float())
    assert not torch.allclose(log_large[:, 0], torch.log(d.betas[sub.timestep_map]).float())


@pytest.mark.parametrize("steps", [1000, 25])
@pytest.mark.parametrize(("v", "fixed"), [(1.0, "fixed_large"), (-1.0, "fixed_small")])
def test_ddpm_with_learned_range_at_an_endpoint_is_the_fixed_variance_chain(steps, v, fixed):
    """With v = +-1 everywhere, ancestral sampling over the (respaced) chain must match the
    fixed variance it reduces to, step for step (the last step adds no noise, so t = 0,
    where fixed_large substitutes beta~_1, does not matter)."""
    betas = get_betas("linear", 1000)
    learned = GaussianDiffusion(betas, variance="learned_range")
    fixed_d = GaussianDiffusion(betas, variance=fixed)
    oracle = GaussianOracle(MU, STD, learned.alphas_cumprod)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    kwargs = dict(steps=steps, clip_denoised=False)
    a = ddpm(WithVariance(oracle, v), learned, x_T, noise=[*range(64)], **kwargs)
    b = ddpm(oracle, fixed_d, x_T, noise=[*range(64)], **kwargs)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ddim_uses_only_the_predicted_noise():
    d = GaussianDiffusion(get_betas("linear", 1000), variance="learned_range")
    oracle = GaussianOracle(MU, STD, d.alphas_cumprod)
    x_T = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    wild = WithVariance(oracle, lambda x, t: torch.randn(x.shape, generator=g) * 5)
    a = ddim(wild, d, x_T, steps=20, eta=0.0)
    b = ddim(WithVariance(oracle, 0.0), d, x_T, steps=20, eta=0.0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("variance", ["learned", "learned_range"])
def test_a_learned_variance_doubles_the_output_channels(compose, variance):
    cfg = compose([f"variance={variance}", "loss=hybrid"])
    with torch.device("meta"):
        model = dc.build_model(cfg)
    assert model.out_channels == 2 * cfg.data.channels
    cfg = compose([f"variance={variance}", "loss=hybrid", "data=moons", "model=mlp"])
    x = torch.randn(5, 2)
    assert dc.build_model(cfg)(x, torch.zeros(5, dtype=torch.int64)).shape == (5, 4)
