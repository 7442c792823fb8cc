"""GaussianDiffusion: forward process, posterior, conversions, reverse step and loss."""

import pytest
import torch
from gaussian_oracle import GaussianOracle

from diffuse_cli.diffusion import (
    PREDICTIONS,
    VARIANCES,
    GaussianDiffusion,
    Variance,
    gather,
    get_betas,
    respace,
)

SHAPES = [(5,), (5, 2), (5, 3, 8, 8)]


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(get_betas("linear", 1000))


def random_t(diffusion, batch, generator):
    return torch.randint(0, diffusion.num_timesteps, (batch,), generator=generator)


def test_tables_are_float64_of_length_T(diffusion):
    for name in [
        "betas",
        "alphas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "alphas_cumprod_next",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    ]:
        table = getattr(diffusion, name)
        assert table.dtype == torch.float64 and table.shape == (1000,), name
    assert diffusion.num_timesteps == 1000
    assert torch.equal(diffusion.timestep_map, torch.arange(1000))
    assert diffusion.alphas_cumprod_prev[0] == 1 and diffusion.alphas_cumprod_next[-1] == 0


def test_posterior_variance_is_ho_eq_7(diffusion):
    d = diffusion
    expected = d.betas * (1 - d.alphas_cumprod_prev) / (1 - d.alphas_cumprod)
    torch.testing.assert_close(d.posterior_variance, expected, rtol=1e-12, atol=0)
    assert d.posterior_variance[0] == 0
    clipped = d.posterior_log_variance_clipped
    assert clipped[0] == torch.log(d.posterior_variance[1])
    torch.testing.assert_close(clipped[1:], torch.log(d.posterior_variance[1:]))


def test_q_posterior_is_bayes_rule(diffusion):
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0), both Gaussian (Ho eq. 2, 4)."""
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 2, 10, 300, 999])
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    alpha = diffusion.alphas[t].reshape(-1, 1)
    beta, abar_prev = 1 - alpha, diffusion.alphas_cumprod_prev[t].reshape(-1, 1)
    # Product of N(x_{t-1}; sqrt(abar_prev) x0, 1 - abar_prev) and, as a function of x_{t-1},
    # N(x_t; sqrt(alpha) x_{t-1}, beta): precisions add, precision-weighted means add.
    precision = 1 / (1 - abar_prev) + alpha / beta
    mean = (abar_prev.sqrt() * x0 / (1 - abar_prev) + alpha.sqrt() * x_t / beta) / precision
    got_mean, got_var, got_log_var = diffusion.q_posterior(x0, x_t, t)
    torch.testing.assert_close(got_mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_var, (1 / precision).expand(5, 3), rtol=1e-10, atol=0)
    torch.testing.assert_close(got_log_var, torch.log(got_var))


def test_q_sample_statistics(diffusion):
    """x_t ~ N(sqrt(abar) x0, 1 - abar): 20000 draws per t, means and variances within 5 SE."""
    g = torch.Generator().manual_seed(1)
    n = 20000
    for step in [0, 100, 500, 999]:
        x0 = torch.full((n, 1), 0.7)
        x_t = diffusion.q_sample(x0, torch.full((n,), step), torch.randn(n, 1, generator=g))
        abar = diffusion.alphas_cumprod[step].item()
        mean, var = 0.7 * abar**0.5, 1 - abar
        assert abs(x_t.mean().item() - mean) < 5 * (var / n) ** 0.5
        assert abs(x_t.var().item() / var - 1) < 5 * (2 / n) ** 0.5
        got_mean, got_var, got_log_var = diffusion.q_mean_variance(x0[:2], torch.full((2,), step))
        torch.testing.assert_close(got_mean, torch.full((2, 1), mean))
        torch.testing.assert_close(got_var, torch.full((2, 1), var))
        torch.testing.assert_close(got_log_var, torch.log(got_var))


@pytest.mark.parametrize("shape", SHAPES)
def test_conversions_round_trip(diffusion, shape):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 700, 999])
    x_t = diffusion.q_sample(x0, t, eps)
    close = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(diffusion.predict_x0_from_eps(x_t, t, eps), x0, **close)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(x_t, t, x0), eps, **close)
    v = diffusion.v_from_x0_eps(x0, eps, t)
    a = diffusion.alphas_cumprod[t].reshape(-1, *[1] * (len(shape) - 1))
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    x0_v, eps_v = diffusion.x0_eps_from_v(x_t, t, v)
    torch.testing.assert_close(x0_v, x0, **close)
    torch.testing.assert_close(eps_v, eps, **close)


@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
def test_model_output_to_x0_eps_inverts_the_target(prediction):
    d = GaussianDiffusion(get_betas("cosine", 100), prediction=prediction)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 30, 50, 80, 99])
    x_t = d.q_sample(x0, t, eps)
    out = d.prediction.target(d, x0, eps, t)
    got_x0, got_eps = d.model_output_to_x0_eps(out, x_t, t)
    torch.testing.assert_close(got_x0, x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(got_eps, eps, rtol=1e-8, atol=1e-8)


def test_float32_tables_follow_the_input_dtype(diffusion):
    x = torch.randn(3, 2)
    t = torch.tensor([0, 10, 999])
    assert gather(diffusion.betas, t, x).dtype == torch.float32
    assert gather(diffusion.betas, t, x).shape == (3, 1)
    assert diffusion.q_sample(x, t).dtype == torch.float32
    assert diffusion.q_sample(x.double(), t).dtype == torch.float64


def test_fixed_variance_tables():
    betas = get_betas("linear", 1000)
    small = GaussianDiffusion(betas, variance="fixed_small")
    large = GaussianDiffusion(betas, variance="fixed_large")
    out = torch.zeros(3, 2)
    t = torch.tensor([0, 1, 999])
    _, log_small = small.variance.split(small, out, t)
    _, log_large = large.variance.split(large, out, t)
    pv = small.posterior_variance
    expected_small = torch.log(torch.stack([pv[1], pv[1], pv[999]])).float()
    expected_large = torch.log(torch.stack([pv[1], betas[1], betas[999]])).float()
    torch.testing.assert_close(log_small, expected_small[:, None].expand(3, 2))
    torch.testing.assert_close(log_large, expected_large[:, None].expand(3, 2))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
def test_p_mean_variance_with_the_exact_model(shape, prediction):
    """With the oracle, the mean is the posterior mean at E[x0 | x_t] (Ho eq. 7)."""
    d = GaussianDiffusion(get_betas("linear", 1000), prediction=prediction)
    oracle = GaussianOracle(0.1, 0.4, d.alphas_cumprod, prediction=prediction)
    x_t = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 3, 200, 600, 999])
    out = d.p_mean_variance(oracle, x_t, t, clip_denoised=False)
    x0, eps, _ = oracle.x0_eps(x_t, t)
    torch.testing.assert_close(out["pred_x0"], x0.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["pred_eps"], eps.float(), rtol=1e-4, atol=1e-4)
    mean, _, log_var = d.q_posterior(x0.float(), x_t, t)
    torch.testing.assert_close(out["mean"], mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["log_variance"], log_var)
    torch.testing.assert_close(out["variance"], log_var.exp())
    for value in out.values():
        assert value.shape == shape and value.dtype == torch.float32


def test_clipping_keeps_x0_and_eps_consistent(diffusion):
    x_t = torch.tensor([[0.5, -2.0], [3.0, 0.0]])
    t = torch.tensor([10, 500])
    wild_eps = lambda x, t: torch.tensor([[-40.0, 40.0], [-3.0, 0.2]])  # noqa: E731
    out = diffusion.p_mean_variance(wild_eps, x_t, t, clip_denoised=True)
    assert out["pred_x0"].abs().max() <= 1
    x_t_again = diffusion.q_sample(out["pred_x0"], t, out["pred_eps"])
    torch.testing.assert_close(x_t_again, x_t, rtol=1e-5, atol=1e-5)


def test_model_receives_original_timesteps():
    d = respace(GaussianDiffusion(get_betas("linear", 100)), [0, 10, 55, 99])
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    x = torch.zeros(4, 2)
    d.p_mean_variance(model, x, torch.tensor([0, 1, 2, 3]))
    d.training_losses(model, x, torch.tensor([3, 2, 1, 0]))
    assert seen[0].tolist() == [0, 10, 55, 99] and seen[1].tolist() == [99, 55, 10, 0]
    assert all(s.dtype == torch.int64 for s in seen)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction", sorted(PREDICTIONS))
def test_training_losses_is_l_simple(shape, prediction):
    d = GaussianDiffusion(get_betas("cosine", 1000), prediction=prediction)
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn((2, *shape), generator=g)
    t = torch.tensor([0, 1, 400, 800, 999])
    target = {"eps": noise, "x0": x0, "v": d.v_from_x0_eps(x0, noise, t)}[prediction]

    perfect = d.training_losses(lambda x, t: target, x0, t, noise=noise)
    assert perfect["loss"].shape == (5,) and torch.equal(perfect["loss"], perfect["mse"])
    assert perfect["loss"].abs().max() == 0

    zero = d.training_losses(lambda x, t: torch.zeros_like(x), x0, t, noise=noise)
    expected = (target**2).reshape(5, -1).mean(dim=1)
    torch.testing.assert_close(zero["loss"], expected)


def test_a_new_variance_class_plugs_in(monkeypatch):
    """A learned variance only needs a Variance subclass: here a toy one reading log sigma^2
    from the second half of the channels (dim 1), as learned variances will."""

    class SecondHalf(Variance):
        name = "second_half"
        channel_factor = 2

        def split(self, diffusion, out, t):
            return out.chunk(2, dim=1)

    monkeypatch.setitem(VARIANCES, "second_half", SecondHalf)
    d = GaussianDiffusion(get_betas("linear", 100), variance="second_half")
    x_t = torch.randn(4, 3, 5, 5)
    eps, log_var = torch.randn(4, 3, 5, 5), torch.full((4, 3, 5, 5), -3.0)
    model = lambda x, t: torch.cat([eps, log_var], 1)  # noqa: E731
    out = d.p_mean_variance(model, x_t, torch.arange(4), clip_denoised=False)
    assert torch.equal(out["log_variance"], log_var) and torch.equal(out["pred_eps"], eps)
    loss = d.training_losses(model, x_t, torch.arange(4))
    assert loss["loss"].shape == (4,)


def test_bad_arguments_are_rejected():
    betas = get_betas("linear", 10)
    with pytest.raises(ValueError, match="prediction 'score'.*eps"):
        GaussianDiffusion(betas, prediction="score")
    with pytest.raises(ValueError, match="variance type 'learnt'.*fixed_small.*learned_range"):
        GaussianDiffusion(betas, variance="learnt")
    with pytest.raises(ValueError, match="timestep_map"):
        GaussianDiffusion(betas, timestep_map=torch.arange(5))
    with pytest.raises(ValueError, match="interval"):
        GaussianDiffusion(torch.tensor([0.5, 1.5]))
