"""NCSN (Song & Ermon 2019): the noise levels, the sigma^2-weighted DSM loss against its closed
form, the langevin sampler's wiring, and the one-line errors for DDPM/NCSN mixes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY
from gaussian_oracle import moments_by_linearity
from mixture_oracle import MixtureOracle
from omegaconf import OmegaConf

from diffuse_cli.build import build_diffusion, build_loss
from diffuse_cli.diffusion import NoiseLevels, geometric_sigmas, get_loss
from diffuse_cli.errors import UserError
from diffuse_cli.samplers import NFECounter, annealed_langevin, evaluations, langevin

NCSN = ["schedule=ncsn", "loss=dsm", "prediction=eps", "schedule.num_timesteps=10"]


def test_geometric_levels_run_from_sigma_max_to_sigma_min_with_equal_ratios():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (10,)
    assert float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == pytest.approx(0.01)
    ratios = sigmas[:-1] / sigmas[1:]
    torch.testing.assert_close(ratios, torch.full((9,), 100 ** (1 / 9), dtype=torch.float64))
    assert geometric_sigmas(0.5, 0.5, 1).tolist() == [0.5]
    with pytest.raises(ValueError, match="sigma_min <= sigma_max"):
        geometric_sigmas(0.01, 1.0, 10)
    with pytest.raises(ValueError, match="integer >= 1"):
        geometric_sigmas(1.0, 0.01, 0)


def test_schedule_ncsn_builds_the_noise_levels(compose):
    cfg = compose([*NCSN, "schedule.sigma_max=2", "schedule.sigma_min=0.02"])
    levels = build_diffusion(cfg)
    assert isinstance(levels, NoiseLevels) and levels.num_timesteps == 10
    assert levels.sigmas[0] == pytest.approx(2.0) and levels.sigmas[-1] == pytest.approx(0.02)
    x0, i, z = torch.zeros(3, 2), torch.tensor([0, 4, 9]), torch.ones(3, 2)
    torch.testing.assert_close(levels.q_sample(x0, i, z)[:, 0], levels.sigmas[i].float())


def gaussian_score_model(mu, s, sigmas, prediction):
    """The exact network for data N(mu, s^2 I): score -(x - mu) / (s^2 + sigma^2), written as
    the output of each prediction type."""

    def model(x, i):
        sigma = sigmas[i].reshape(-1, 1).to(x.dtype)
        score = -(x - mu) / (s**2 + sigma**2)
        return {"score": score, "eps": -sigma * score, "x0": x + sigma**2 * score}[prediction]

    return model


@pytest.mark.parametrize("prediction", ["score", "eps", "x0"])
def test_dsm_loss_of_the_exact_score_is_the_closed_form(prediction):
    """x = x0 + sigma z with x0 ~ N(mu, s^2): the optimal score gives, per dimension,
    1/2 E (sigma s + z)^2 = s^2 / (2 (s^2 + sigma^2)). A loss weighted by 1 instead of sigma^2
    would give that divided by sigma^2 (10 000 times more at sigma = 0.01), one without the 1/2
    twice as much: both fail."""
    mu, s = 0.3, 0.5
    levels = NoiseLevels(geometric_sigmas(2.0, 0.01, 6), prediction)
    model = gaussian_score_model(mu, s, levels.sigmas, prediction)
    g = torch.Generator().manual_seed(0)
    n, dim = 20000, 4
    loss = get_loss("dsm")
    for level in range(6):
        x0 = mu + s * torch.randn(n, dim, generator=g, dtype=torch.float64)
        i = torch.full((n,), level)
        z = torch.randn(n, dim, generator=g, dtype=torch.float64)
        got = loss(levels, model, x0, i, noise=z)["loss"]
        sigma = float(levels.sigmas[level])
        want = s**2 / (2 * (s**2 + sigma**2))
        assert float(got.mean()) == pytest.approx(want, rel=0.02), (level, sigma)
        worse = loss(levels, lambda x, i: 1.1 * model(x, i), x0, i, noise=z)["loss"]
        assert float(worse.mean()) > float(got.mean())  # the exact score is the minimizer


def test_every_prediction_reads_the_same_score():
    sigmas = geometric_sigmas(1.0, 0.01, 5)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    i = torch.tensor([0, 1, 3, 4])
    scores = [
        NoiseLevels(sigmas, p).score(gaussian_score_model(0.1, 0.4, sigmas, p), x, i)
        for p in ("score", "eps", "x0")
    ]
    torch.testing.assert_close(scores[1], scores[0])
    torch.testing.assert_close(scores[2], scores[0])
    with pytest.raises(ValueError, match="no meaning for a score model"):
        NoiseLevels(sigmas, "v")


def test_langevin_is_annealed_langevin_from_sigma_1_with_the_default_step():
    """The registry's langevin on an eps-model of the mixture equals NCSN Algorithm 1 on its
    exact score, started at sigma_1 x_T, with epsilon = 0.4 sigma_L^2; L T + 1 evaluations."""
    oracle = MixtureOracle()
    levels = NoiseLevels(geometric_sigmas(2.0, 0.02, 5), "eps")
    sig = levels.sigmas

    def eps_model(x, i):
        return -sig[i].reshape(-1, 1).float() * oracle.score_sigma(x, sig[i])

    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    counted = NFECounter(eps_model)
    got = langevin(
        counted,
        levels,
        x_T,
        steps=5,
        noise=torch.Generator().manual_seed(4),
        steps_per_level=3,
        clip_denoised=False,
    )
    assert counted.calls == evaluations("langevin", 5, steps_per_level=3) == 16
    want = annealed_langevin(
        lambda x, i: oracle.score_sigma(x, sig[i]),
        sig,
        2.0 * x_T,
        steps_per_level=3,
        epsilon=0.4 * 0.02**2,
        noise=torch.Generator().manual_seed(4),
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="visits all 5 noise levels"):
        langevin(eps_model, levels, x_T, steps=3)


# Gaussian data N(MU, diag(S^2)) for the Langevin tests: the noised data is N(MU, S^2 + sigma^2),
# so the exact score -(x - MU) / (S^2 + sigma^2) is affine in x and so is every Langevin step.
MU = torch.tensor([0.3, -0.2], dtype=torch.float64)
S = torch.tensor([0.5, 0.1], dtype=torch.float64)


def langevin_moments(sigmas, epsilon, steps_per_level, denoise, m, v):
    """Mean and variance after annealed Langevin dynamics from N(m, v) on the exact score of
    N(MU, S^2), written from NCSN Algorithm 1 (Song & Ermon 2019) apart from the sampler: at
    level i, V = S^2 + sigma_i^2 and alpha_i = epsilon sigma_i^2 / sigma_L^2, each step
    x + (alpha_i / 2) s + sqrt(alpha_i) z is x (1 - alpha_i / (2 V)) + alpha_i MU / (2 V) +
    sqrt(alpha_i) z; the denoising step x + sigma_L^2 s is (S^2 x + sigma_L^2 MU) / V_L."""
    last = float(sigmas[-1])
    for sigma in map(float, sigmas):
        var_level, alpha = S**2 + sigma**2, epsilon * sigma**2 / last**2
        keep = 1 - alpha / (2 * var_level)
        for _ in range(steps_per_level):
            m, v = keep * m + (1 - keep) * MU, keep**2 * v + alpha
    if denoise:
        var_level = S**2 + last**2
        m, v = (S**2 * m + last**2 * MU) / var_level, (S**2 / var_level) ** 2 * v
    return m, v


@pytest.mark.parametrize("denoise", [True, False])
def test_langevin_moments_on_gaussian_data_equal_algorithm_1(denoise):
    """The registry's langevin on the exact eps-model of Gaussian data, from x_T ~ N(0, I)
    (so the chain starts at N(0, sigma_1^2)): its output mean and variance, exact by linearity
    in float64, equal the recursion of NCSN Algorithm 1 with the documented step
    x + (alpha / 2) s + sqrt(alpha) z. A drift of alpha s with the same noise (a chain that
    targets p^2), or the other convention x + alpha s + sqrt(2 alpha) z with this alpha, give
    other moments."""
    sigmas = geometric_sigmas(2.0, 0.05, 4)
    levels = NoiseLevels(sigmas, "eps")
    model = gaussian_score_model(MU, S, sigmas, "eps")
    epsilon, steps_per_level = 0.5 * 0.05**2, 6

    def run(x_T, noise):
        return langevin(
            model,
            levels,
            x_T,
            steps=4,
            noise=noise,
            steps_per_level=steps_per_level,
            epsilon=epsilon,
            denoise=denoise,
            clip_denoised=False,
        )

    zeros = torch.zeros(2, dtype=torch.float64)
    mean, var, draws = moments_by_linearity(run, zeros, torch.ones(2), 4 * steps_per_level)
    assert draws == 4 * steps_per_level  # no noise in the denoising step
    want_mean, want_var = langevin_moments(
        sigmas, epsilon, steps_per_level, denoise, zeros, float(sigmas[0]) ** 2
    )
    torch.testing.assert_close(mean, want_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, want_var, rtol=1e-10, atol=1e-12)


def test_a_long_langevin_chain_at_one_level_samples_p_sigma():
    """At a single level sigma the Langevin chain x + (alpha / 2) s + sqrt(alpha) z with the
    exact score of p_sigma = N(MU, S^2 + sigma^2) has p_sigma as its stationary law up to its
    step bias: the discretized chain keeps variance V / (1 - alpha / (4 V)), here within 2.6% of
    V = S^2 + sigma^2 (Roberts & Tweedie 1996 for the unadjusted chain). 400 steps from N(0, 0.01)
    forget the start (the mean contracts by 1 - alpha / (2 V) <= 0.9853 per step, 0.003 in all).
    A drift of alpha s targets p_sigma^2, of variance V / 2."""
    sigma, epsilon, steps = 0.3, 0.01, 400
    mean, var, _ = moments_by_linearity(
        lambda x, noise: annealed_langevin(
            lambda x, i: -(x - MU) / (S**2 + sigma**2),
            [sigma],
            x,
            steps_per_level=steps,
            epsilon=epsilon,
            denoise=False,
            noise=noise,
        ),
        torch.zeros(2, dtype=torch.float64),
        torch.full((2,), 0.1),
        steps,
    )
    target = S**2 + sigma**2
    assert ((mean - MU).abs() < 2e-3).all(), mean
    assert ((var / target - 1).abs() < 0.03).all(), var / target


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["schedule=ncsn"], "loss=simple is a DDPM loss; schedule=ncsn trains with loss=dsm"),
        (["loss=dsm"], "loss=dsm trains an NCSN and needs schedule=ncsn"),
        (["schedule=ncsn", "loss=dsm", "prediction=v"], "prediction=v has no meaning"),
        (["prediction=score"], "prediction=score (the raw score) is for schedule=ncsn"),
        (["schedule=ncsn", "loss=dsm", "variance=learned_range"], "variance=learned_range"),
        (
            ["schedule=ncsn", "loss=dsm", "loss.timesteps=importance"],
            "loss=dsm does not compute",
        ),
    ],
)
def test_train_refuses_a_ddpm_ncsn_mix_in_one_line(compose, tmp_path, capsys, overrides, message):
    """What the CLI runs after composing (cli._task): exit status 2, one line, nothing written."""
    from diffuse_cli.cli import _task

    cfg = compose([*TINY, *overrides, f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_info:
        _task("train")(cfg)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def ncsn_run(tmp_path_factory):
    """A tiny NCSN trained once through the CLI (in this process): 4 steps, a Langevin preview."""
    from conftest import run_cli_in_process

    cwd = tmp_path_factory.mktemp("ncsn")
    run_cli_in_process("train", *TINY, *NCSN, "name=ncsn", cwd=cwd)
    return cwd, cwd / "runs" / "ncsn"


def test_cli_trains_an_ncsn_and_samples_it_with_langevin(ncsn_run):
    from conftest import run_cli_in_process

    cwd, run = ncsn_run
    assert OmegaConf.load(run / "config.yaml").schedule.name == "ncsn"
    assert (run / "samples" / "step_00000004.png").is_file()  # the Langevin preview
    args = ["sampler=langevin", "sampler.steps_per_level=2", "num_samples=3", "progress=false"]
    proc = run_cli_in_process("sample", "run_dir=runs/ncsn", *args, cwd=cwd)
    assert "10 noise levels x 2 steps" in proc.stdout
    assert "21 network evaluations per sample" in proc.stdout
    arr = np.load(run / "samples" / "langevin-10x2" / "samples.npz")["arr_0"]
    assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8


def test_sampling_an_ncsn_with_a_ddpm_sampler_is_one_line(ncsn_run):
    from conftest import run_cli_in_process

    cwd, run = ncsn_run
    proc = run_cli_in_process("sample", "run_dir=runs/ncsn", "sampler=ddim", cwd=cwd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "sampler=ddim samples a DDPM, but this run is an NCSN" in proc.stderr
    assert not (run / "samples" / "ddim-10").exists()


def test_langevin_on_a_ddpm_run_and_nll_on_an_ncsn_run_are_refused(
    ncsn_run, compose, tmp_path, capsys
):
    from diffuse_cli.cli import _task

    cwd, run = ncsn_run
    ddpm_run = tmp_path / "ddpm"
    ddpm_run.mkdir()
    OmegaConf.save(compose(TINY), ddpm_run / "config.yaml")  # no checkpoint is needed to refuse
    cases = [
        ("sample", ["sampler=langevin", f"run_dir={ddpm_run}"], "sampler=langevin (annealed"),
        ("eval", ["metrics=[nll]", f"run_dir={run}"], "metrics=[nll] is the variational bound"),
        ("sample", ["steps=5", f"run_dir={run}", "sampler=langevin"], "visits all L=10 noise"),
    ]
    for command, overrides, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            _task(command)(compose(overrides, command=command))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err, err


def test_eval_loss_of_an_ncsn_is_the_dsm_loss_per_level(ncsn_run, compose):
    from diffuse_cli.api import load_run
    from diffuse_cli.evaluate.loss_report import held_out_loss
    from diffuse_cli.runs import with_run_config

    _, run = ncsn_run
    _, model, levels = load_run(run)
    cfg = compose(["eval.num_batches=1", "eval.batch_size=20", "progress=false"], "eval")
    cfg = OmegaConf.merge(with_run_config(cfg, run), {"loss": {"name": "dsm"}})
    with pytest.raises(UserError, match="loss=simple is a DDPM loss"):
        build_loss(with_run_config(compose([], "eval"), run))  # the run's loss is read back
    grad_modes = []
    model.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    report = held_out_loss(cfg, model, levels, "cpu")
    assert grad_modes and not any(grad_modes)  # measured without building an autograd graph
    assert [b["t_min"] for b in report["buckets"]] == list(range(10))
    assert report["buckets"][0]["sigma_max"] == pytest.approx(1.0)
    assert report["buckets"][-1]["sigma_min"] == pytest.approx(0.01)
    assert math.isfinite(report["loss"]) and 0 < report["loss"] < 5
    json.dumps(report)


def test_dc_sample_runs_langevin_on_noise_levels(compose):
    """The Python API: dc.sample with sampler=langevin on an exact eps-model of the 2-D mixture."""
    import diffuse_cli as dc

    overrides = ["schedule=ncsn", "prediction=eps", "data=moons", "model=mlp", "sampler=langevin"]
    cfg = compose([*overrides, "sampler.steps_per_level=2"], command="sample")
    levels = dc.build_diffusion(cfg)
    oracle = MixtureOracle()

    def eps_model(x, i):
        sigma = levels.sigmas[i].reshape(-1, 1).float()
        return -sigma * oracle.score_sigma(x, levels.sigmas[i])

    counted = NFECounter(eps_model)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    x = dc.sample(cfg, counted, levels, noise=x_T, generator=torch.Generator().manual_seed(1))
    assert x.shape == (8, 2) and x.abs().max() <= 1 and counted.calls == 10 * 2 + 1
    # a sample config composed apart from the run (README: dc.load_run, then compose_config
    # with the sampler alone) has the default DDPM schedule: the diffusion decides the family
    apart = compose(["sampler=langevin", "sampler.steps_per_level=2"], command="sample")
    again = dc.sample(
        apart, eps_model, levels, noise=x_T, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(again, x)
    with pytest.raises(UserError, match="sampler=ddim samples a DDPM, but this run is an NCSN"):
        dc.sample(compose(["sampler=ddim"], command="sample"), eps_model, levels, noise=x_T)


def test_a_run_saved_before_the_ncsn_keys_still_resumes(compose, tmp_path):
    """Runs written before schedule.sigma_max/sigma_min existed have no such keys; resuming
    them must not count the new keys (at their defaults) as a different schedule."""
    from diffuse_cli.train.validate import check_resumable

    cfg = compose(TINY)
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["schedule"]["sigma_max"], saved["schedule"]["sigma_min"]
    OmegaConf.save(OmegaConf.create(saved), tmp_path / "config.yaml")
    step = tmp_path / "checkpoints" / "step_00000002"
    step.mkdir(parents=True)
    (step / "state.json").write_text("{}")
    check_resumable(cfg, tmp_path)
    with pytest.raises(UserError, match="schedule.name='cosine' \\(saved: 'linear'\\)"):
        check_resumable(compose([*TINY, "schedule=cosine"]), tmp_path)
