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


def test_linear_betas_scaled_to_t_keep_the_end_of_the_process_at_noise():
    """improved-diffusion's rule: beta_start and beta_end are for T = 1000, times 1000/T."""
    scaled = get_betas("linear", 100, scale_to_timesteps=True)
    torch.testing.assert_close(scaled, torch.linspace(1e-3, 0.2, 100, dtype=torch.float64))
    reference = get_betas("linear", 1000)
    assert torch.equal(get_betas("linear", 1000, scale_to_timesteps=True), reference)
    abar_end = lambda betas: torch.prod(1 - betas).item()  # noqa: E731
    assert abar_end(scaled) < 1e-4 and abar_end(reference) < 1e-4
    assert abar_end(get_betas("linear", 100)) > 0.3  # as given, T = 100 ends far from noise
    with pytest.raises(ValueError, match=r"beta_T = 0.02 x 1000/T = 1 >= 1"):
        get_betas("linear", 20, scale_to_timesteps=True)


def test_the_config_scales_linear_betas_except_in_runs_written_before_it_did(compose, tmp_path):
    from omegaconf import OmegaConf

    import diffuse_cli as dc
    from diffuse_cli.runs import read_run_config

    cfg = compose(["schedule.num_timesteps=100"])
    assert dc.build_diffusion(cfg).alphas_cumprod[-1] < 1e-4
    given = compose(["schedule.num_timesteps=100", "schedule.scale_betas=false"])
    assert dc.build_diffusion(given).alphas_cumprod[-1] > 0.3
    old = OmegaConf.to_container(cfg)
    del old["schedule"]["scale_betas"]
    OmegaConf.save(OmegaConf.create(old), tmp_path / "config.yaml")
    assert read_run_config(tmp_path).schedule.scale_betas is False  # its betas as trained


@pytest.mark.parametrize("overrides", [[], ["schedule=cosine"]])
def test_runs_from_before_scale_betas_whose_betas_it_does_not_change_resume(
    compose, tmp_path, overrides
):
    """Linear at T = 1000 (the default) and cosine: the key changes nothing, so a run written
    before it existed resumes with the command that trained it."""
    from omegaconf import OmegaConf

    from diffuse_cli.train.checkpoint import save_checkpoint
    from diffuse_cli.train.validate import check_resumable

    cfg = compose([*overrides, f"run_dir={tmp_path}"])
    old = OmegaConf.to_container(cfg)
    del old["schedule"]["scale_betas"]
    del old["model"]["rescale_timesteps"]  # nor model.rescale_timesteps (read back as false)
    OmegaConf.save(OmegaConf.create(old), tmp_path / "config.yaml")
    w = {"w": torch.zeros(1)}
    save_checkpoint(tmp_path, 1, w, w, {"state": {}, "param_groups": []}, {})
    check_resumable(cfg, tmp_path)
