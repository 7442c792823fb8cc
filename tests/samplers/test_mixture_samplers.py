"""Samplers driven by the exact model of a 2-D Gaussian mixture (tests/oracles/mixture_oracle.py).

Distances are energy distances (unbiased) to fresh mixture samples; with N = 2000 two samples of
the mixture itself give |d| < ~5e-4, and the tolerances below are what each sampler's
discretization measured (scripts/bench_samplers.py) plus that noise, stated per test.
"""

import math

import pytest
import torch
from gaussian_oracle import GaussianOracle
from mixture_oracle import (
    COVS,
    MEANS,
    MIXTURES,
    WEIGHTS,
    MixtureOracle,
    component_stats,
    energy_distance,
)

from diffuse_cli.diffusion import GaussianDiffusion, get_betas
from diffuse_cli.samplers import (
    SAMPLERS,
    SCORE_SAMPLERS,
    NFECounter,
    annealed_langevin,
    ddim,
    dpm_solver,
    euler,
    evaluations,
    get_sampler,
    heun,
    pc,
)

# The samplers of a GaussianDiffusion (langevin samples the NoiseLevels of an NCSN).
DDPM_SAMPLERS = {k: v for k, v in SAMPLERS.items() if k not in SCORE_SAMPLERS}
N = 2000
DIFFUSION = GaussianDiffusion(get_betas("linear", 1000))


def data_and_noise(seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    return MixtureOracle().sample_data(n, g), torch.randn(n, 2, generator=g)


def assert_mixture(x, ref, distance, weights, means, cov_rel):
    """Energy distance to ref, component weights and means (absolute), covariances (largest
    entry error relative to the largest entry) within the given tolerances."""
    w, m, c = component_stats(x)
    assert energy_distance(x, ref) < distance
    assert (w - WEIGHTS).abs().max() < weights, w
    assert (m - MEANS).abs().max() < means, m
    rel = (c - COVS).abs().amax((1, 2)) / COVS.abs().amax((1, 2))
    assert rel.max() < cov_rel, rel


def test_the_oracle_eps_is_the_scaled_score_of_the_noised_mixture():
    oracle = MixtureOracle(DIFFUSION.alphas_cumprod)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 300)
    _, eps, a = oracle.x0_eps(x, t)
    xr = x.clone().requires_grad_()
    comps = torch.distributions.MultivariateNormal(
        a[0].sqrt() * MEANS, a[0] * COVS + (1 - a[0]) * torch.eye(2, dtype=torch.float64)
    )
    log_p = torch.logsumexp(comps.log_prob(xr[:, None, :]) + WEIGHTS.log(), dim=1)
    (score,) = torch.autograd.grad(log_p.sum(), xr)
    torch.testing.assert_close(eps, -(1 - a).sqrt() * score)
    sigma_score = oracle.score_sigma(x, 0.3)
    comps = torch.distributions.MultivariateNormal(MEANS, COVS + 0.09 * torch.eye(2).double())
    log_p = torch.logsumexp(comps.log_prob(xr[:, None, :]) + WEIGHTS.log(), dim=1)
    (score,) = torch.autograd.grad(log_p.sum(), xr)
    torch.testing.assert_close(sigma_score, score)


def test_euler_is_ddim_and_dpm_solver_order_1_is_ddim():
    oracle = MixtureOracle(DIFFUSION.alphas_cumprod)
    _, x_T = data_and_noise(n=256)
    for spacing in ("even", "karras", "logsnr"):
        want = ddim(oracle, DIFFUSION, x_T, steps=12, spacing=spacing)
        torch.testing.assert_close(euler(oracle, DIFFUSION, x_T, steps=12, spacing=spacing), want)
        got = dpm_solver(oracle, DIFFUSION, x_T, steps=12, spacing=spacing, order=1)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", sorted(DDPM_SAMPLERS))
def test_each_sampler_reports_its_network_evaluations(name):
    counted = NFECounter(MixtureOracle(DIFFUSION.alphas_cumprod))
    get_sampler(name)(counted, DIFFUSION, torch.zeros(3, 2), steps=6)
    assert counted.calls == evaluations(name, 6)
    assert evaluations("heun", 6) == 11 and evaluations("pc", 6, corrector_steps=2) == 16


@pytest.mark.parametrize("name", sorted(DDPM_SAMPLERS))
def test_every_sampler_takes_eps_x0_and_v_models(name):
    """The same exact model in three parameterizations gives the same samples (in float64: in
    float32 the conversions at abar_T ~ 4e-5 cost digits that the ODE can amplify)."""
    _, x_T = data_and_noise(n=64)
    x_T = x_T.double()
    outs = []
    for prediction in ("eps", "x0", "v"):
        diffusion = GaussianDiffusion(get_betas("linear", 1000), prediction=prediction)
        oracle = MixtureOracle(diffusion.alphas_cumprod, prediction, record=True)
        g = torch.Generator().manual_seed(1)
        outs.append(get_sampler(name)(oracle, diffusion, x_T, steps=8, noise=g))
        assert all(t.dtype == torch.int64 and 0 <= int(t.min()) for t in oracle.calls)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-6, atol=1e-6)


# (sampler, steps, spacing, options): 37 to 50 network evaluations each. Measured distances
# <= 1.3e-3 (noise 5e-4), weights within 0.02 (SE 0.011), means within 0.015; the covariances
# lose up to ~30% in the narrowest direction (the chain's bias, plus 12% sampling noise).
ODE_CASES = [
    ("ddim", 50, "even", {}),
    ("euler", 50, "karras", {}),
    ("heun", 25, "karras", {}),
    ("dpm_solver", 40, "logsnr", {}),
]


@pytest.mark.parametrize(("name", "steps", "spacing", "options"), ODE_CASES)
def test_ode_samplers_reach_the_mixture(name, steps, spacing, options):
    ref, x_T = data_and_noise(0)
    oracle = MixtureOracle(DIFFUSION.alphas_cumprod)
    x = get_sampler(name)(
        oracle, DIFFUSION, x_T, steps=steps, spacing=spacing, clip_denoised=False, **options
    )
    assert_mixture(x, ref, distance=3e-3, weights=0.04, means=0.03, cov_rel=0.5)


def test_dpm_solver_beats_euler_and_ddim_at_10_evaluations():
    """Measured at 10 NFE: dpm_solver ~3e-3, euler (logsnr grid) ~1e-2, ddim (even) ~2.7e-2."""
    ref, x_T = data_and_noise(0)
    oracle = MixtureOracle(DIFFUSION.alphas_cumprod)

    def distance(sampler, spacing):
        x = sampler(oracle, DIFFUSION, x_T, steps=10, spacing=spacing, clip_denoised=False)
        return energy_distance(x, ref)

    best = distance(dpm_solver, "logsnr")
    assert 2 * best < distance(euler, "logsnr")
    assert 2 * best < distance(euler, "karras")
    assert 2 * best < distance(ddim, "even")
    assert 2 * best < distance(ddim, "trailing")


def test_heun_beats_euler_and_ddim_at_equal_evaluations():
    """Heun is second order, but on this schedule (sigma from 157 to 0.01) and its default
    rho = 7 grid it only wins from about 40 evaluations: a few steps of that grid cross the
    data's scale in one step (on the logSNR grid it wins from ~19, see the test above).
    Measured exactly (moments by linearity) on Gaussian data with std 0.1, relative variance
    error: heun with 40 steps (79 NFE) ~0.048, euler with 79 steps ~0.10, ddim ~0.27; at 39 NFE
    heun 0.14 against euler 0.19; at 19 NFE they tie (0.37 against 0.34)."""
    oracle = GaussianOracle(torch.tensor([0.3]), torch.tensor([0.1]), DIFFUSION.alphas_cumprod)
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)

    def var_error(sampler, steps, spacing):
        y = sampler(oracle, DIFFUSION, x, steps=steps, spacing=spacing, clip_denoised=False)
        return abs(float((y[1] - y[0]) ** 2) / 0.1**2 - 1)

    best = var_error(heun, 40, "karras")
    assert 1.5 * best < var_error(euler, 79, "karras")
    assert 4 * best < var_error(ddim, 79, "even")
    assert var_error(heun, 20, "karras") < var_error(euler, 39, "karras")
    assert var_error(dpm_solver, 39, "logsnr") < var_error(euler, 39, "logsnr")


@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_heun_and_dpm_solver_beat_euler_and_ddim_at_about_20_evaluations(mixture):
    """Heun with 10 steps on the logSNR grid (19 NFE) and DPM-Solver++(2M) with 19 steps are
    closer to the mixture than euler and ddim given 20 evaluations, on every grid those have.
    Measured at N = 4000, seeds 0-4: heun 0.6-1.8e-3 (narrow), 2.0-3.8e-3 (broad); the best of
    euler and ddim 1.5-2.9e-3 and 3.0-5.0e-3; the gap 0.9-1.2e-3 at every seed, while two samples
    of the mixture itself give |d| < 3.5e-4. At 9 NFE, and on the karras grid at 19, heun loses
    (docs/benchmarks/samplers.md)."""
    n = 4000
    g = torch.Generator().manual_seed(0)
    oracle = MixtureOracle(DIFFUSION.alphas_cumprod, spread=MIXTURES[mixture])
    ref = oracle.sample_data(n, g)
    x_T = torch.randn(n, 2, generator=g)

    def distance(sampler, steps, spacing):
        counted = NFECounter(oracle)
        x = sampler(counted, DIFFUSION, x_T, steps=steps, spacing=spacing, clip_denoised=False)
        assert counted.calls == (19 if sampler in (heun, dpm_solver) else 20)
        return energy_distance(x, ref)

    first_order = min(
        distance(euler, 20, "karras"),
        distance(euler, 20, "logsnr"),
        distance(ddim, 20, "even"),
        distance(ddim, 20, "trailing"),
    )
    assert distance(heun, 10, "logsnr") + 5e-4 < first_order
    assert distance(dpm_solver, 19, "logsnr") + 5e-4 < first_order


def test_heun_does_not_amplify_errors_on_short_grids():
    """Steps that shrink sigma 50-600 times (3 or 5 karras steps from sigma 157): EDM's slope
    average multiplied the proposal's error by ~sigma / (2 sigma') and gave variances 845 and 8
    times too large (energy distance 1.9 at 5 NFE); the denoiser average is a convex
    combination, its error stays below 1 (the variance shrinks, as euler's does)."""
    oracle = GaussianOracle(torch.tensor([0.3]), torch.tensor([0.1]), DIFFUSION.alphas_cumprod)
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    for steps in (3, 5):
        y = heun(oracle, DIFFUSION, x, steps=steps, spacing="karras", clip_denoised=False)
        assert abs(float((y[1] - y[0]) ** 2) / 0.1**2 - 1) < 1
    ref, x_T = data_and_noise(0)
    mixture = MixtureOracle(DIFFUSION.alphas_cumprod)
    x = heun(mixture, DIFFUSION, x_T, steps=3, spacing="karras", clip_denoised=False)
    assert energy_distance(x, ref) < 0.6  # measured 0.42 (euler at 5 NFE: 0.08)


@pytest.mark.parametrize("predictor", ["ddpm", "ddim"])
def test_pc_reaches_the_mixture(predictor):
    """50 predictor steps + 49 corrector steps; measured distance <= 1.8e-3, covariances within
    ~57% (ancestral predictor: 50 noisy steps are coarse) or ~33% (ddim predictor)."""
    ref, x_T = data_and_noise(0)
    oracle = MixtureOracle(DIFFUSION.alphas_cumprod)
    g = torch.Generator().manual_seed(1)
    x = pc(oracle, DIFFUSION, x_T, steps=50, noise=g, clip_denoised=False, predictor=predictor)
    assert_mixture(x, ref, distance=4e-3, weights=0.04, means=0.03, cov_rel=0.8)


def test_annealed_langevin_reaches_the_mixture():
    """10 levels from sigma 2 to 0.01, 50 steps each, epsilon 2e-5 (alpha_i / sigma_i^2 = 0.2),
    N = 1000: measured distance ~1e-3, weights within 0.03 (SE 0.015), covariances ~30%. Slow
    (~5 s alone): 501 score evaluations."""
    ref, _ = data_and_noise(0, n=1000)
    oracle = MixtureOracle()
    sigmas = torch.logspace(math.log10(2.0), math.log10(0.01), 10)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1000, 2, generator=g) * 2 - 1
    counted = NFECounter(lambda x, i: oracle.score_sigma(x, sigmas[i]))
    x = annealed_langevin(counted, sigmas, x, steps_per_level=50, epsilon=2e-5, noise=g)
    assert counted.calls == 10 * 50 + 1  # and the denoising step
    assert_mixture(x, ref, distance=4e-3, weights=0.06, means=0.03, cov_rel=0.6)


def test_bad_options_fail_loudly():
    oracle = MixtureOracle(DIFFUSION.alphas_cumprod)
    x_T = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="order=3 must be one of: 1, 2"):
        dpm_solver(oracle, DIFFUSION, x_T, steps=5, order=3)
    with pytest.raises(ValueError, match="predictor='euler' must be one of: ddpm, ddim"):
        pc(oracle, DIFFUSION, x_T, steps=5, predictor="euler")
    with pytest.raises(ValueError, match="snr=0.0 must be > 0"):
        pc(oracle, DIFFUSION, x_T, steps=5, snr=0.0)
    with pytest.raises(TypeError):
        heun(oracle, DIFFUSION, x_T, steps=5, eta=0.0)
    with pytest.raises(ValueError, match="Unknown timestep spacing 'rho'.*karras"):
        euler(oracle, DIFFUSION, x_T, steps=5, spacing="rho")
    with pytest.raises(ValueError, match="decreasing"):
        annealed_langevin(lambda x, i: x, [0.1, 1.0], x_T, steps_per_level=1, epsilon=1e-5)
