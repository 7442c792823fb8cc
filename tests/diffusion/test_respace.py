"""Timestep spacings and respaced diffusions."""

import pytest
import torch

from diffuse_cli.diffusion import SPACINGS, GaussianDiffusion, get_betas, respace, space_timesteps

CASES = [(1000, 1), (1000, 2), (1000, 10), (1000, 50), (1000, 333), (1000, 999), (1000, 1000)]
CASES += [(7, 3), (7, 7), (10, 4), (4000, 250), (97, 13)]


@pytest.mark.parametrize("spacing", sorted(SPACINGS))
@pytest.mark.parametrize(("T", "steps"), CASES)
def test_spacings_give_steps_unique_sorted_timesteps(spacing, T, steps):
    kept = space_timesteps(T, steps, spacing)
    assert len(kept) == steps and all(isinstance(t, int) for t in kept)
    assert kept == sorted(set(kept))
    assert 0 <= kept[0] and kept[-1] <= T - 1
    if spacing in ("even", "linspace", "leading") and steps > 1:
        assert kept[0] == 0
    if spacing in ("even", "linspace", "trailing") or steps == 1:
        assert kept[-1] == T - 1  # one step starts from pure noise, whatever the spacing


def test_known_values():
    assert space_timesteps(1000, 10, "trailing") == list(range(99, 1000, 100))
    assert space_timesteps(1000, 10, "leading") == list(range(0, 1000, 100))
    assert space_timesteps(1000, 10, "linspace") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    # improved-diffusion "50": fractional stride 999 / 49 = 20.39 from 0, each rounded.
    assert space_timesteps(1000, 50, "even")[:5] == [0, 20, 41, 61, 82]
    assert space_timesteps(1000, 50, "even")[-1] == 999
    assert space_timesteps(1000, 3, "trailing") == [332, 666, 999]  # round(333.3), round(666.7)
    assert space_timesteps(10, 4, "leading") == [0, 2, 4, 6]
    assert space_timesteps(5, 5, "even") == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, True])
def test_impossible_step_counts_are_rejected(steps):
    with pytest.raises(ValueError, match="steps must be an integer from 1 to 1000"):
        space_timesteps(1000, steps, "even")


def test_unknown_spacing_names_the_choices():
    with pytest.raises(ValueError, match="even.*trailing"):
        space_timesteps(1000, 10, "quadratic")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spacing", sorted(SPACINGS))
def test_respaced_betas_reproduce_the_kept_alphas_cumprod(schedule, spacing):
    d = GaussianDiffusion(get_betas(schedule, 1000), prediction="v", variance="fixed_large")
    kept = space_timesteps(1000, 37, spacing)
    sub = respace(d, kept)
    assert sub.num_timesteps == 37 and sub.betas.dtype == torch.float64
    # Exact up to float64 rounding; 1 - (1 - r) loses a few digits when beta' is near 1 (cosine).
    torch.testing.assert_close(sub.alphas_cumprod, d.alphas_cumprod[kept], rtol=1e-10, atol=0)
    assert sub.timestep_map.tolist() == kept
    assert (sub.prediction.name, sub.variance.name) == ("v", "fixed_large")


def test_respacing_composes_timestep_maps():
    d = GaussianDiffusion(get_betas("linear", 100))
    first = respace(d, [0, 5, 20, 50, 70, 99])
    second = respace(first, [1, 3, 5])
    assert second.timestep_map.tolist() == [5, 50, 99]
    torch.testing.assert_close(second.alphas_cumprod, d.alphas_cumprod[[5, 50, 99]])


def test_keeping_every_timestep_is_the_same_diffusion():
    d = GaussianDiffusion(get_betas("linear", 50))
    assert respace(d, space_timesteps(50, 50, "even")) is d
    assert respace(d, range(50)) is d


def test_respace_rejects_out_of_range_timesteps():
    d = GaussianDiffusion(get_betas("linear", 50))
    with pytest.raises(ValueError, match=r"\[0, 49\]"):
        respace(d, [0, 50])
    with pytest.raises(ValueError):
        respace(d, [])
