"""The EDM formulation (schedule=edm): preconditioning, loss and samplers against closed forms.

Sampler tolerances are energy distances (unbiased) to fresh mixture samples, N = 2000; two
samples of the mixture itself give |d| < ~5e-4. Each bound below is the measured value with
a margin, stated per test.
"""

import math

import pytest
import torch
from edm_oracle import (
    ClassGaussiansSigma,
    DenoiserNetwork,
    gaussian_denoiser,
    mixture_denoiser,
)
from mixture_oracle import COVS, MEANS, WEIGHTS, MixtureOracle, component_stats, energy_distance

from diffuse_cli.diffusion import EDMDiffusion, EDMLoss, LogNormalSigmas, mean_flat
from diffuse_cli.guidance import ClassifierFree, ClassifierGradient, DenoiserShift, WithLabels
from diffuse_cli.samplers import EDM_SAMPLERS, NFECounter, evaluations, get_sampler

EDM = EDMDiffusion()
N = 2000
SIGMAS = torch.tensor([0.002, 0.05, 0.3, 0.5, 1.0, 4.0, 80.0], dtype=torch.float64)


def test_preconditioning_is_edm_table_1():
    s, sd = SIGMAS, 0.5
    root = (s**2 + sd**2).sqrt()
    torch.testing.assert_close(EDM.c_skip(s), sd**2 / (s**2 + sd**2))
    torch.testing.assert_close(EDM.c_out(s), s * sd / root)
    torch.testing.assert_close(EDM.c_in(s), 1 / root)
    torch.testing.assert_close(EDM.c_noise(s), s.log() / 4)
    torch.testing.assert_close(EDM.loss_weight(s), (s**2 + sd**2) / (s * sd) ** 2)
    torch.testing.assert_close(EDM.loss_weight(s), 1 / EDM.c_out(s) ** 2)  # F's plain MSE
    torch.testing.assert_close(EDM.sigma_of_noise_label(EDM.c_noise(s)), s)


@pytest.mark.parametrize("sigma_data", [0.5, 0.2])
def test_network_input_and_effective_target_have_unit_variance(sigma_data):
    """EDM app. B.6: for data of standard deviation sigma_data, Var(c_in x) = 1 and the target
    F* = (x0 - c_skip x) / c_out has Var = ((1 - c_skip)^2 sd^2 + c_skip^2 sigma^2) / c_out^2 = 1,
    in closed form and by Monte Carlo; data of another spread do not."""
    edm = EDMDiffusion(sigma_data=sigma_data)
    s = SIGMAS
    skip, out, c_in = edm.c_skip(s), edm.c_out(s), edm.c_in(s)
    for sd, unit in ((sigma_data, True), (2 * sigma_data, False)):
        input_var = c_in**2 * (sd**2 + s**2)
        target_var = ((1 - skip) ** 2 * sd**2 + skip**2 * s**2) / out**2
        assert torch.allclose(target_var, torch.ones_like(s)) == unit
        assert torch.allclose(input_var, torch.ones_like(s)) == unit
    g = torch.Generator().manual_seed(0)
    x0 = sigma_data * torch.randn(200_000, generator=g, dtype=torch.float64)
    for sigma in (0.05, 1.0, 30.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        t = torch.tensor(sigma, dtype=torch.float64)
        target = (x0 - edm.c_skip(t) * x) / edm.c_out(t)
        assert (
            abs(float(target.var()) - 1) < 0.01 and abs(float((edm.c_in(t) * x).var()) - 1) < 0.01
        )


def test_training_sigmas_are_log_normal_and_buckets_equally_likely():
    g = torch.Generator().manual_seed(0)
    sigma, weights = LogNormalSigmas(EDM).sample(100_000, generator=g)
    assert sigma.dtype == torch.float32 and bool((weights == 1).all())
    logs = sigma.double().log()
    assert abs(float(logs.mean()) + 1.2) < 0.02 and abs(float(logs.std()) - 1.2) < 0.02
    counts = torch.bincount(EDM.bucket_of_sigma(sigma, 10), minlength=10).double()
    assert ((counts / counts.sum() - 0.1).abs() < 0.005).all(), counts
    median = EDM.sigma_at_quantile(0.5)
    assert abs(float(median) - math.exp(-1.2)) < 1e-12


def test_karras_grid_is_edm_eq_5_then_zero():
    grid = EDM.sampling_sigmas(18)
    a, b = 80 ** (1 / 7), 0.002 ** (1 / 7)
    expected = [(a + i / 17 * (b - a)) ** 7 for i in range(18)] + [0.0]
    assert grid == pytest.approx(expected, rel=1e-12)
    assert grid[0] == pytest.approx(80) and grid[17] == pytest.approx(0.002)
    logs = [math.log(s) for s in EDM.sampling_sigmas(5, "logsnr")[:-1]]
    assert [logs[i] - logs[i + 1] for i in range(4)] == pytest.approx([logs[0] - logs[1]] * 4)
    assert EDM.sampling_sigmas(1) == [80.0, 0.0]
    with pytest.raises(ValueError, match="spaces integer timesteps"):
        EDM.sampling_sigmas(5, "even")


def test_loss_is_lambda_weighted_denoiser_mse_and_f_mse():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 3).double()

    def model(x_in, c_noise):
        return net(x_in) * (1 + c_noise[:, None])

    x0 = torch.randn(5, 3, dtype=torch.float64)
    sigma, noise = torch.rand(5, dtype=torch.float64) * 3 + 0.01, torch.randn(5, 3).double()
    out = EDMLoss()(EDM, model, x0, sigma, noise=noise)
    x = x0 + sigma[:, None] * noise
    s = sigma[:, None]
    f = model(EDM.c_in(s) * x, EDM.c_noise(sigma))
    d = EDM.c_skip(s) * x + EDM.c_out(s) * f
    torch.testing.assert_close(out["mse"], mean_flat((d - x0) ** 2))
    torch.testing.assert_close(out["loss"], EDM.loss_weight(sigma) * mean_flat((d - x0) ** 2))
    target = (x0 - EDM.c_skip(s) * x) / EDM.c_out(s)
    torch.testing.assert_close(out["loss"], mean_flat((f - target) ** 2))


def test_the_optimal_denoiser_gives_the_known_minimum_of_the_loss():
    """Data N(mu, s^2 I): E||D* - x0||^2 = s^2 sigma^2 / (s^2 + sigma^2) per dimension, and any
    other denoiser (here D* shrinking towards a shifted mean) does worse on the same draws."""
    mu, s = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64), 0.4
    oracle = DenoiserNetwork(EDM, gaussian_denoiser(mu, s))
    g = torch.Generator().manual_seed(1)
    x0 = mu + s * torch.randn(20_000, 4, generator=g, dtype=torch.float64)
    for sigma in (0.02, 0.3, 1.0, 10.0):
        levels = torch.full((len(x0),), sigma, dtype=torch.float64)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        out = EDMLoss()(EDM, oracle, x0, levels, noise=noise)
        minimum = s**2 * sigma**2 / (s**2 + sigma**2)
        assert abs(float(out["mse"].mean()) / minimum - 1) < 0.03, (sigma, out["mse"].mean())
        worse = DenoiserNetwork(EDM, gaussian_denoiser(mu + 0.05, s))
        assert float(EDMLoss()(EDM, worse, x0, levels, noise=noise)["mse"].mean()) > float(
            out["mse"].mean()
        )


def mixture_run(name, steps, seed=0, **options):
    oracle = MixtureOracle()
    g = torch.Generator().manual_seed(seed)
    ref = oracle.sample_data(N, g)
    x_T = torch.randn(N, 2, generator=g)
    net = NFECounter(DenoiserNetwork(EDM, mixture_denoiser(oracle)))
    sampler = get_sampler(name, EDM)
    x = sampler(net, EDM, x_T, steps=steps, noise=g, clip_denoised=False, **options)
    assert net.calls == evaluations(name, steps, **options)
    return x, ref


def assert_on_the_mixture(x, ref):
    """The tolerances of tests/samplers/test_mixture_samplers.py's ODE samplers: energy distance
    3e-3, component weights 0.04 and means 0.03 (absolute), covariances 60% (the narrowest
    direction is what a coarse chain loses)."""
    w, m, c = component_stats(x)
    assert energy_distance(x, ref) < 3e-3
    assert (w - WEIGHTS).abs().max() < 0.04, w
    assert (m - MEANS).abs().max() < 0.03, m
    rel = (c - COVS).abs().amax((1, 2)) / COVS.abs().amax((1, 2))
    assert rel.max() < 0.6, rel


# Measured (distance, largest mean error, covariance error): heun 18 steps = 35 evaluations
# (EDM's CIFAR-10 setting) 2.3e-3, 0.020, 0.28; stochastic heun, 32 steps at EDM's ImageNet
# churn settings, -2e-4, 0.007, 0.17; euler 35: 2.1e-3, 0.027, 0.54; dpm_solver 25: 1.9e-3, 0.013,
# 0.18; ddim eta 0.5, 35 steps: 9e-4, 0.024, 0.14. This narrow mixture makes the ODE stiff at
# small sigma: at 11 to 25 evaluations EDM's heun is no better than euler here (25: 5.1e-3 vs
# 2.7e-3), as samplers/ode.py found for the DDPM grid.
@pytest.mark.parametrize(
    "name,steps,options",
    [
        ("heun", 18, {}),
        ("heun", 32, {"s_churn": 40, "s_tmin": 0.05, "s_tmax": 50, "s_noise": 1.003}),
        pytest.param("euler", 35, {}, marks=pytest.mark.slow),
        ("dpm_solver", 25, {}),
        pytest.param("ddim", 35, {"eta": 0.5}, marks=pytest.mark.slow),
    ],
)
def test_edm_samplers_driven_by_the_optimal_denoiser_land_on_the_mixture(name, steps, options):
    x, ref = mixture_run(name, steps, **options)
    assert_on_the_mixture(x, ref)


def test_euler_is_ddim_at_eta_0_and_dpm_solver_order_1():
    cases = (("euler", {}), ("ddim", {}), ("dpm_solver", {"order": 1}))
    runs = [mixture_run(n, 6, **o)[0] for n, o in cases]
    torch.testing.assert_close(runs[0], runs[1])
    torch.testing.assert_close(runs[0], runs[2])


def test_the_sampler_starts_at_sigma_max_and_one_step_returns_the_denoised_start():
    calls = []

    def model(x_in, c_noise):
        calls.append((x_in.clone(), c_noise.clone()))
        return torch.zeros_like(x_in)

    x_T = torch.randn(4, 2)
    x = get_sampler("heun", EDM)(model, EDM, x_T, steps=1, clip_denoised=False)
    ((x_in, c_noise),) = calls
    torch.testing.assert_close(c_noise, torch.full((4,), math.log(80) / 4))
    torch.testing.assert_close(x_in, 80 * x_T / math.sqrt(80**2 + 0.25))
    torch.testing.assert_close(x, EDM.c_skip(torch.tensor(80.0)) * 80 * x_T)  # D with F = 0


def test_guidance_shifts_the_denoiser_as_the_conditional_one():
    """With exact class-conditional Gaussians: classifier-free guidance at w = 1 and classifier
    guidance at s = 1 of the unconditional denoiser both give the conditional denoiser exactly
    (D(x | y) = D(x) + sigma^2 grad log p(y | x)), at every sigma."""
    means = torch.tensor([[0.6, 0.0], [-0.6, 0.3], [0.0, -0.7]], dtype=torch.float64)
    oracle = ClassGaussiansSigma(EDM, means, std=0.2)
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    for sigma in (0.05, 0.5, 3.0):
        x = (torch.randn(6, 2, generator=g, dtype=torch.float64) * (0.5 + sigma)).float()
        levels = torch.full((6,), sigma)
        conditional = EDM.denoise(oracle.network(), x, levels, {"y": y})
        expected = oracle.denoise(x.double(), levels.double()[:, None], y).float()
        torch.testing.assert_close(conditional, expected, atol=2e-5, rtol=1e-4)
        cfg = EDM.denoise(ClassifierFree(oracle.network(), 1.0), x, levels, {"y": y})
        torch.testing.assert_close(cfg, conditional, atol=2e-5, rtol=1e-4)
        unconditional = WithLabels(_Unconditional(oracle.network()))
        shifted = DenoiserShift(unconditional, EDM, ClassifierGradient(oracle.classifier, 1.0))
        guided = EDM.denoise(shifted, x, levels, {"y": y})
        torch.testing.assert_close(guided, conditional, atol=2e-5, rtol=1e-4)
        plain = EDM.denoise(unconditional, x, levels, {"y": y})
        assert (plain - conditional).abs().max() > 1e-3  # the guidance did something


class _Unconditional:
    num_classes = None

    def __init__(self, net):
        self.net = net

    def __call__(self, x_in, c_noise):
        return self.net(x_in, c_noise, torch.full((len(x_in),), self.net.num_classes))


def test_every_edm_sampler_counts_its_evaluations_and_takes_labels():
    seen = []

    def model(x_in, c_noise, y):
        seen.append(y)
        return torch.zeros_like(x_in)

    y = torch.tensor([1, 2])
    for name in EDM_SAMPLERS:
        seen.clear()
        get_sampler(name, EDM)(model, EDM, torch.randn(2, 3, 4, 4), steps=4, model_kwargs={"y": y})
        assert len(seen) == evaluations(name, 4) and all(s is y for s in seen)
    assert evaluations("heun", 18) == 35


def test_networks_of_an_edm_run_take_c_noise_as_a_float_unscaled(compose):
    """c_noise = ln(sigma) / 4 lies in about [-1.6, 1.1]: the embedding must not round it, and
    model.rescale_timesteps (refused for edm) must not scale it."""
    from diffuse_cli.build import build_model
    from diffuse_cli.models.embeddings import timestep_embedding

    emb = timestep_embedding(torch.tensor([0.10, 0.11, -1.5]), 32)
    assert (emb[0] - emb[1]).abs().max() > 5e-3 and (emb[0] - emb[2]).abs().max() > 0.5
    for model in ("small", "mlp"):
        data = ["data=moons"] if model == "mlp" else []
        cfg = compose([f"model={model}", *data, "schedule=edm", "prediction=edm"])
        assert build_model(cfg).timestep_scale == 1.0
