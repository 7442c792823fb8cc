"""Noise schedules against their closed forms (Ho et al. 2020; Nichol & Dhariwal 2021)."""

import math

import pytest
import torch

from diffuse_cli.diffusion import SCHEDULES, get_betas


def test_linear_is_linspace_in_float64():
    betas = get_betas("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    steps = betas[1:] - betas[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, (0.02 - 1e-4) / 999))


def test_linear_custom_endpoints():
    betas = get_betas("linear", 10, beta_start=0.001, beta_end=0.05)
    assert betas[0].item() == pytest.approx(0.001) and betas[-1].item() == pytest.approx(0.05)


def cosine_alpha_bar_closed_form(t, T, s=0.008):
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


@pytest.mark.parametrize("T", [50, 1000, 4000])
def test_cosine_alpha_bar_matches_closed_form_until_clipping(T):
    betas = get_betas("cosine", T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    # Before the last step nothing is clipped, so abar_t = alpha_bar((t + 1) / T) exactly.
    for t in [0, 1, T // 4, T // 2, T - 2]:
        expected = cosine_alpha_bar_closed_form(t + 1, T)
        assert alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-9, abs=1e-14)


def test_cosine_clips_at_max_beta_at_the_end():
    betas = get_betas("cosine", 1000)
    assert betas.max().item() == 0.999
    assert betas[-1].item() == 0.999  # alpha_bar(1) = 0 would give beta = 1
    assert (betas[:-1] < 0.999).all()
    assert get_betas("cosine", 1000, max_beta=0.5).max().item() == 0.5


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_are_increasing_and_in_unit_interval(name):
    betas = get_betas(name, 1000)
    assert ((betas > 0) & (betas < 1)).all()
    assert (betas[1:] >= betas[:-1]).all()
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    assert (alphas_cumprod[1:] < alphas_cumprod[:-1]).all()


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="cosine.*linear"):
        get_betas("quadratic", 1000)


def test_bad_num_timesteps():
    with pytest.raises(ValueError, match="positive integer"):
        get_betas("linear", 0)
