"""Samplers driven by the exact denoiser of Gaussian data (tests/oracles/gaussian_oracle.py).

With that oracle every sampler step is affine per dimension, so the output distribution of the
discretized chain is known exactly (gaussian_oracle.reverse_moments). Two kinds of check:
- exact: by linearity, running the sampler on a few basis inputs gives its output mean and
  variance with float32 precision; they must equal the independent recursion (rtol 2e-4).
- statistical: real random samples must match the data's mean and variance within 5 standard
  errors of the sample moments plus the chain's own discretization bias, stated per test.
"""

import numpy as np
import pytest
import torch
from gaussian_oracle import BasisNoise, GaussianOracle, moments_by_linearity, reverse_moments

from diffuse_cli.diffusion import GaussianDiffusion, get_betas, respace, space_timesteps
from diffuse_cli.samplers import (
    SAMPLERS,
    SCORE_SAMPLERS,
    PerSampleNoise,
    as_noise_source,
    ddim,
    ddpm,
    evaluations,
    get_sampler,
    pc,
)
from diffuse_cli.samplers.grids import SPACINGS
from diffuse_cli.samplers.noise import seeded_generator
from diffuse_cli.samplers.pc import langevin_corrector_step

# The samplers of a GaussianDiffusion (langevin samples the NoiseLevels of an NCSN).
DDPM_SAMPLERS = {k: v for k, v in SAMPLERS.items() if k not in SCORE_SAMPLERS}
MU = torch.tensor([0.5, -0.3, 0.2, 0.0])
STD = torch.tensor([0.3, 0.5, 0.8, 1.0])
PREDICTIONS = ["eps", "x0", "v"]


def make(schedule="linear", prediction="eps", variance="fixed_small", T=1000, record=False):
    diffusion = GaussianDiffusion(get_betas(schedule, T), prediction, variance)
    oracle = GaussianOracle(MU, STD, diffusion.alphas_cumprod, prediction, record=record)
    return diffusion, oracle


def exact_output_moments(sampler, diffusion, oracle, steps, **options):
    """Mean and variance of the sampler's output for x_T ~ N(0, I), by linearity: row 0 starts
    at 0 with no noise (the mean), row 1 at x_T = 1, row 2 + k at 0 with unit noise at draw k."""
    rows = torch.zeros(steps + 1, *MU.shape)
    rows[1] = 1.0
    noise = BasisNoise(len(rows))
    out = sampler(oracle, diffusion, rows, steps=steps, noise=noise, clip_denoised=False, **options)
    mean = out[0].double()
    return mean, ((out[1:].double() - mean) ** 2).sum(dim=0), noise.draws


EXACT_CASES = [
    ("ddpm", "fixed_small", 1000, "even", {}),
    ("ddpm", "fixed_small", 50, "even", {}),
    ("ddpm", "fixed_large", 50, "trailing", {}),
    ("ddim", "fixed_small", 10, "even", {"eta": 0.0}),
    ("ddim", "fixed_small", 25, "linspace", {"eta": 0.0}),
    ("ddim", "fixed_small", 20, "even", {"eta": 0.5}),
    ("ddim", "fixed_small", 50, "leading", {"eta": 1.0}),
]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize(("name", "variance", "steps", "spacing", "options"), EXACT_CASES)
def test_output_moments_equal_the_discretized_chain(
    prediction, name, variance, steps, spacing, options
):
    diffusion, oracle = make("linear", prediction, variance)
    sampler = get_sampler(name)
    mean, var, draws = exact_output_moments(
        sampler, diffusion, oracle, steps, spacing=spacing, **options
    )
    sub = respace(diffusion, space_timesteps(1000, steps, spacing))
    want_mean, want_var = reverse_moments(oracle, sub, name, variance, options.get("eta", 0.0))
    torch.testing.assert_close(mean, want_mean, rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(var, want_var, rtol=2e-4, atol=1e-6)
    noisy = name == "ddpm" or options["eta"] > 0
    assert draws == (steps - 1 if noisy else 0)  # never noise at the last step


@pytest.mark.parametrize("prediction", ["eps", "x0"])
@pytest.mark.parametrize(("predictor", "corrector_steps"), [("ddpm", 1), ("ddim", 1), ("ddpm", 3)])
def test_pc_output_moments_equal_the_discretized_chain(prediction, predictor, corrector_steps):
    """pc on the Gaussian oracle, exact moments by linearity in float64: every predictor step
    but the last followed by `corrector_steps` Langevin steps x + e s + sqrt(2 e) z at the
    predictor's target (Song et al. 2021, Algorithm 5, with samplers.pc's step size), against
    the independent recursion of gaussian_oracle.reverse_moments. A corrector that returns x
    unchanged leaves the predictor's moments."""
    diffusion, oracle = make("linear", prediction)
    steps = 10

    def run(x_T, noise):
        return pc(
            oracle,
            diffusion,
            x_T,
            steps=steps,
            noise=noise,
            clip_denoised=False,
            predictor=predictor,
            corrector_steps=corrector_steps,
        )

    draws = (steps - 1) * (corrector_steps + (predictor == "ddpm"))
    mean, var, made = moments_by_linearity(run, torch.zeros(4), torch.ones(4), draws)
    assert made == draws
    sub = respace(diffusion, space_timesteps(1000, steps, "even"))
    want_mean, want_var = reverse_moments(
        oracle, sub, predictor, corrector_steps=corrector_steps, snr=0.16
    )
    torch.testing.assert_close(mean, want_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, want_var, rtol=1e-9, atol=1e-12)
    predictor_only = reverse_moments(oracle, sub, predictor)[1]
    assert ((var - predictor_only).abs() / predictor_only > 1e-3).any()


@pytest.mark.parametrize(("predictor", "sampler"), [("ddpm", ddpm), ("ddim", ddim)])
def test_pc_without_corrector_is_its_predictor_bit_for_bit(predictor, sampler):
    """pc's predictor steps are ddpm's and ddim's own (samplers.steps): with corrector_steps=0
    it returns exactly what they return from the same x_T and per-sample seeds."""
    diffusion, oracle = make("linear", "eps")
    x_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    common = dict(steps=20, spacing="trailing", clip_denoised=True)
    alone = sampler(oracle, diffusion, x_T, noise=PerSampleNoise(range(6)), **common)
    in_pc = pc(oracle, diffusion, x_T, noise=PerSampleNoise(range(6)), **common,
               predictor=predictor, corrector_steps=0)  # fmt: skip
    assert torch.equal(alone, in_pc)


@pytest.mark.parametrize("t", [300, 600])
@pytest.mark.parametrize("start_var", [4.0, 0.25])
def test_langevin_corrector_moves_a_wrong_distribution_to_p_t(t, start_var):
    """Langevin corrector steps at timestep t with the exact score of p_t = N(sqrt(a) MU,
    a STD^2 + 1 - a) (a = abar_t) pull any start towards p_t: from the wrong mean 0 and
    start_var times p_t's variance, 200 steps (snr 0.16) land within 3.5% of p_t's variance and
    0.01 std of its mean. The step e = 2 alpha_t snr^2 (1 - a) does not depend on x, so the
    chain is affine and its moments exact by linearity; its own stationary variance is
    V / (1 - e / (2 V)) (Roberts & Tweedie 1996), 1.6-2.6% above V here. A corrector that
    returns x keeps the start."""
    diffusion, oracle = make("linear", "eps")
    a = diffusion.alphas_cumprod[t]
    target_var = a * STD.double() ** 2 + 1 - a
    index = torch.full((2 + 200,), t)

    def run(x, noise):
        for _ in range(200):
            x = langevin_corrector_step(oracle, diffusion, x, index, 0.16, noise, False, None)
        return x

    start_std = (start_var * target_var).sqrt()
    mean, var, _ = moments_by_linearity(run, torch.zeros(4), start_std, 200)
    mean_z = (mean - a.sqrt() * MU.double()) / target_var.sqrt()
    assert (mean_z.abs() < 0.01).all(), mean_z
    assert ((var / target_var - 1).abs() < 0.035).all(), var / target_var


def test_discretization_bias_shrinks_with_steps():
    """Documents the tolerances below: for Gaussian data DDIM (eta = 0) is Euler on the
    probability-flow ODE and loses variance at O(1 / steps); with 10 steps it keeps only ~36%
    of the variance of the narrowest dimension, with 1000 steps over 98%."""
    diffusion, oracle = make("linear")

    def worst_var_ratio(steps, sampler, variance="fixed_small", eta=0.0):
        sub = respace(diffusion, space_timesteps(1000, steps, "even"))
        return (reverse_moments(oracle, sub, sampler, variance, eta)[1] / STD**2).min().item()

    assert worst_var_ratio(10, "ddim") < worst_var_ratio(50, "ddim") < worst_var_ratio(1000, "ddim")
    assert 0.3 < worst_var_ratio(10, "ddim") < 0.4 and worst_var_ratio(1000, "ddim") > 0.98
    # Ancestral sampling with beta (fixed_large) is close to exact at a few hundred steps.
    sub = respace(diffusion, space_timesteps(1000, 250, "even"))
    ratio = reverse_moments(oracle, sub, "ddpm", "fixed_large")[1] / STD**2
    assert (ratio - 1).abs().max() < 0.03


def assert_reproduces_data(x, bias_bound):
    """Sample mean within 5 SE (+0.005 std, the chain's mean bias) of MU; sample variance within
    5 SE (relative SE sqrt(2 / n)) plus `bias_bound` of STD^2, per dimension."""
    n = x.shape[0]
    mean_z = ((x.double().mean(0) - MU) / STD).abs()
    var_ratio = x.double().var(0) / STD**2
    assert (mean_z < 5 / n**0.5 + 0.005).all(), mean_z
    assert ((var_ratio - 1).abs() < bias_bound + 5 * (2 / n) ** 0.5).all(), var_ratio


# 8000 x 4 stays under torch's intra-op parallel grain, so these run single-threaded and fast.
N = 8000


def test_ddpm_samples_reproduce_the_data():
    """Ancestral sampling, 250 of 1000 steps, beta variance: chain bias <= 2.8% (see above)."""
    diffusion, oracle = make("linear", "eps", "fixed_large")
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(N, 4, generator=g)
    x = ddpm(oracle, diffusion, x_T, steps=250, noise=g, clip_denoised=False)
    assert_reproduces_data(x, bias_bound=0.03)


def test_ddim_deterministic_samples_reproduce_the_data():
    """DDIM eta = 0 with 100 steps of a cosine schedule: chain variance bias <= 4.5%."""
    diffusion, oracle = make("cosine", "v")
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(N, 4, generator=g)
    x = ddim(oracle, diffusion, x_T, steps=100, noise=g, clip_denoised=False)
    assert_reproduces_data(x, bias_bound=0.05)


def test_ddim_stochastic_samples_reproduce_the_data():
    """DDIM eta = 1 (ancestral with beta~), 250 cosine steps: chain variance bias <= 4.7%."""
    diffusion, oracle = make("cosine", "x0")
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(N, 4, generator=g)
    x = ddim(oracle, diffusion, x_T, steps=250, noise=g, clip_denoised=False, eta=1.0)
    assert_reproduces_data(x, bias_bound=0.05)


# --- seeds, determinism, timesteps, shapes ---------------------------------------------------


@pytest.mark.parametrize(("name", "options"), [("ddpm", {}), ("ddim", {"eta": 1.0})])
def test_a_seeded_sample_does_not_depend_on_its_batch(name, options):
    diffusion, oracle = make("linear", "eps")

    def run(seeds):
        noise = PerSampleNoise(seeds)
        x_T = noise.randn((3, 4, 4))
        return get_sampler(name)(oracle, diffusion, x_T, steps=20, noise=noise, **options)

    four, eight = run([10, 11, 12, 13]), run([10, 11, 12, 13, 14, 15, 16, 17])
    # The noise is bit-identical; the arithmetic may differ in the last bit across batch sizes.
    torch.testing.assert_close(four, eight[:4], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(four[0], four[1])
    torch.testing.assert_close(run([12]), four[2:3], rtol=1e-6, atol=1e-6)


def test_ddim_eta_0_is_deterministic_given_x_T():
    diffusion, oracle = make("cosine", "eps")
    x_T = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))

    class NoNoise:
        batch_size = 6

        def randn(self, shape, dtype=torch.float32):
            raise AssertionError("DDIM with eta = 0 must not draw noise")

        randn_like = randn

    first = ddim(oracle, diffusion, x_T, steps=15, noise=NoNoise())
    second = ddim(oracle, diffusion, x_T.clone(), steps=15, noise=torch.Generator().manual_seed(9))
    assert torch.equal(first, second)


@pytest.mark.parametrize("spacing", ["even", "trailing", "leading", "linspace"])
@pytest.mark.parametrize("name", sorted(DDPM_SAMPLERS))
def test_the_model_sees_original_timesteps_in_reverse_order(name, spacing):
    diffusion, oracle = make(record=True)
    get_sampler(name)(oracle, diffusion, torch.zeros(3, 4), steps=7, spacing=spacing)
    kept = space_timesteps(1000, 7, spacing)
    calls = [t.tolist() for t in oracle.calls]
    assert len(calls) == evaluations(name, 7)  # heun and pc evaluate some timesteps twice
    assert all(t == [t[0]] * 3 for t in calls) and all(t.dtype == torch.int64 for t in oracle.calls)
    assert list(dict.fromkeys(t[0] for t in calls)) == list(reversed(kept))
    assert [t[0] for t in calls] == sorted((t[0] for t in calls), reverse=True)


@pytest.mark.parametrize("shape", [(4,), (4, 2), (4, 3, 8, 8)])
@pytest.mark.parametrize("name", sorted(DDPM_SAMPLERS))
def test_any_data_shape(name, shape):
    diffusion = GaussianDiffusion(get_betas("linear", 100), prediction="v")
    oracle = GaussianOracle(0.2, 0.5, diffusion.alphas_cumprod, prediction="v")
    g = torch.Generator().manual_seed(4)
    x = get_sampler(name)(oracle, diffusion, torch.randn(shape, generator=g), steps=10, noise=g)
    assert x.shape == shape and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.abs().max() <= 1  # clip_denoised: the last step returns the clipped x0


@pytest.mark.parametrize("spacing", sorted(SPACINGS))
@pytest.mark.parametrize("name", sorted(DDPM_SAMPLERS))
def test_one_step_returns_the_predicted_x0(name, spacing):
    """One step starts at t = T - 1 with every spacing (even, leading and linspace alone would
    pick t = 0 and return the noise)."""
    diffusion, oracle = make("linear", "eps")
    x_T = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))
    x = get_sampler(name)(oracle, diffusion, x_T, steps=1, spacing=spacing, clip_denoised=False)
    x0, _, _ = oracle.x0_eps(x_T, torch.full((5,), 999))
    torch.testing.assert_close(x, x0.float(), rtol=1e-4, atol=1e-4)


def test_samplers_run_without_grad_and_pass_model_kwargs():
    diffusion, oracle = make()
    weight = torch.ones((), requires_grad=True)
    seen = []

    def model(x, t, y=None):
        seen.append(y)
        return oracle(x, t) * weight

    for sampler in DDPM_SAMPLERS.values():
        x = sampler(model, diffusion, torch.zeros(2, 4), steps=3, model_kwargs={"y": "label"})
        assert not x.requires_grad
    assert seen == ["label"] * sum(evaluations(name, 3) for name in DDPM_SAMPLERS)


def test_progress_bar(capsys):
    diffusion, oracle = make()
    ddpm(oracle, diffusion, torch.zeros(2, 4), steps=5, progress=True)
    assert "sampling" in capsys.readouterr().err


# --- errors --------------------------------------------------------------------------------


def test_bad_options_fail_loudly():
    diffusion, oracle = make()
    x_T = torch.zeros(2, 4)
    with pytest.raises(TypeError):
        ddpm(oracle, diffusion, x_T, steps=5, eta=0.5)  # ddpm has no eta
    with pytest.raises(TypeError):
        ddim(oracle, diffusion, x_T, steps=5, etta=0.5)  # a typo
    for eta in (-1.0, 1.5):  # above 1 no variance keeps the marginals of x_t
        with pytest.raises(ValueError, match=rf"eta={eta} must be in \[0, 1\]"):
            ddim(oracle, diffusion, x_T, steps=5, eta=eta)
    with pytest.raises(ValueError, match="from 1 to 1000"):
        ddim(oracle, diffusion, x_T, steps=1001)
    with pytest.raises(ValueError, match="3 samples but the batch has 2"):
        ddpm(oracle, diffusion, x_T, steps=5, noise=PerSampleNoise([1, 2, 3]))


def test_get_sampler():
    assert get_sampler("ddim") is ddim and get_sampler("ddpm") is ddpm
    choices = "ddim, ddpm, dpm_solver, euler, heun, langevin, pc"
    with pytest.raises(ValueError, match=f"'eulr'.*{choices}"):
        get_sampler("eulr")


# --- noise sources -------------------------------------------------------------------------


def test_per_sample_noise_rows_come_from_their_own_seed():
    batch = PerSampleNoise([7, 8, 9]).randn((2, 3))
    assert batch.shape == (3, 2, 3) and batch.dtype == torch.float32
    for row, seed in zip(batch, [7, 8, 9], strict=True):
        alone = seeded_generator(seed).standard_normal((2, 3), dtype=np.float32)
        assert torch.equal(row, torch.from_numpy(alone))
    noise = PerSampleNoise([8])
    like = noise.randn_like(torch.zeros(1, 2, 3, dtype=torch.float64))
    assert like.dtype == torch.float64 and like.shape == (1, 2, 3)
    assert torch.equal(like.float(), batch[1:2])
    with pytest.raises(ValueError, match="1 samples but the tensor has batch size 2"):
        noise.randn_like(torch.zeros(2, 3))


def test_per_sample_noise_uses_every_bit_of_a_seed():
    """(run seed << 32) + index must not collide across run seeds (torch's CPU generator would
    keep only the low 32 bits)."""
    a = PerSampleNoise([5, (1 << 32) + 5, (1 << 100) + 5]).randn((4,))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])


def test_sample_seeds_of_different_run_seeds_never_collide():
    """Sample i of run seed s has seed (s << 32) + i: seed + i would give sample 1 of seed 0
    the initial noise of sample 0 of seed 1, so two seeds' sample sets would overlap."""
    from diffuse_cli.sampling_loop import sample_seed

    assert len({sample_seed(s, i) for s in range(3) for i in range(1000)}) == 3000


def test_the_initial_noise_of_a_sample_is_its_own_for_every_run_seed(compose, monkeypatch):
    """The sampling loop gives sample i of seed s the noise of sample_seed(s, i): x_T of (seed 0,
    i=1) is not that of (seed 1, i=0), and equals the per-sample stream of its seed."""
    from diffuse_cli import generate, sampling_loop

    monkeypatch.setattr(sampling_loop, "sample", lambda cfg, model, diffusion, x_T, *a, **k: x_T)

    cfg = compose(["data.image_size=4", "batch_size=2"], "sample")
    unguided = sampling_loop.GuidedModel(None, None, num_classes=None, null_label=None)

    def x_T(seed, indices):
        cfg.seed = seed
        return generate.draw_samples(cfg, unguided, None, torch.device("cpu"), indices)

    seed0, seed1 = x_T(0, range(0, 3)), x_T(1, range(0, 3))
    assert seed0.shape == (3, 3, 4, 4)
    assert not torch.equal(seed0[1], seed1[0])
    assert torch.equal(seed0[2], x_T(0, range(2, 3))[0])  # whatever batch it is drawn in
    expected = PerSampleNoise([(1 << 32) + 2]).randn((3, 4, 4))[0]
    assert torch.equal(seed1[2], expected)


def test_as_noise_source_adapts_generators_seeds_and_none():
    g = as_noise_source(torch.Generator().manual_seed(0), 4)
    expected = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g.randn((2,)), expected)
    assert as_noise_source(None, 4).randn_like(torch.zeros(4, 2)).shape == (4, 2)
    seeded = as_noise_source([3, 4], 2)
    assert isinstance(seeded, PerSampleNoise) and seeded.seeds == [3, 4]
    per_sample = PerSampleNoise([1, 2])
    assert as_noise_source(per_sample, 2) is per_sample
    with pytest.raises(TypeError, match="noise must be"):
        as_noise_source("seed", 2)
