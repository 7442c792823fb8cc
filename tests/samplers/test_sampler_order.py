"""The ODE samplers (euler, heun, dpm_solver) against the exact probability-flow ODE of Gaussian
data, and their steps against the papers' update rules written independently here.

For data N(MU, S^2) and the VE view x~ = x_t / sqrt(abar_t), sigma = sqrt((1 - abar) / abar),
the denoiser is D(x~, sigma) = MU + S^2 / (S^2 + sigma^2) (x~ - MU), and the probability-flow ODE
dx~/dsigma = (x~ - D) / sigma (Karras et al. 2022, EDM eq. 3-4) reads
d(x~ - MU)/dsigma = sigma / (S^2 + sigma^2) (x~ - MU), solved by

    x~(sigma') - MU = sqrt((S^2 + sigma'^2) / (S^2 + sigma^2)) (x~(sigma) - MU)

so the exact output of a sampler's grid is known: the flow from its first timestep to its last,
then the x0 predicted there (every sampler returns D at its smallest timestep, its step to
sigma = 0). Everything runs in float64 on two starts, x_T = 0 and 1 (the output is affine in
x_T, so these two rows are its whole map). The reference reads the timesteps from the calls the
model received, so it uses exactly the abar values the sampler used.
"""

import math

import pytest
import torch
from gaussian_oracle import GaussianOracle

from diffuse_cli.diffusion import GaussianDiffusion, get_betas
from diffuse_cli.samplers import dpm_solver, euler, heun

DIFFUSION = GaussianDiffusion(get_betas("linear", 1000))
ABARS = DIFFUSION.alphas_cumprod.double()
MU, S = 0.3, 0.5
X_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)


def run(sampler, steps, spacing, **options):
    """(output [2, 1], the distinct timesteps the model saw, largest first)."""
    mu, std = torch.tensor([MU], dtype=torch.float64), torch.tensor([S], dtype=torch.float64)
    oracle = GaussianOracle(mu, std, ABARS, record=True)
    out = sampler(
        oracle, DIFFUSION, X_T, steps=steps, spacing=spacing, clip_denoised=False, **options
    )
    return out, list(dict.fromkeys(int(t[0]) for t in oracle.calls))


def sigma(t):
    a = float(ABARS[t])
    return math.sqrt((1 - a) / a)


def denoiser(x, sig):
    """E[x0 | x~] for x~ = x0 + sig z, x0 ~ N(MU, S^2)."""
    return MU + S**2 / (S**2 + sig**2) * (x - MU)


def exact_output(timesteps):
    """The exact probability-flow ODE from the first timestep to the last, then D there."""
    first, last = sigma(timesteps[0]), sigma(timesteps[-1])
    x = X_T / math.sqrt(float(ABARS[timesteps[0]]))
    x = MU + math.sqrt((S**2 + last**2) / (S**2 + first**2)) * (x - MU)
    return denoiser(x, last)


def error(sampler, steps, spacing, **options):
    out, timesteps = run(sampler, steps, spacing, **options)
    assert timesteps[0] == 999 and timesteps[-1] == 0  # the same ODE, start and end, at any steps
    return float((out - exact_output(timesteps)).abs().max())


@pytest.mark.parametrize(
    ("sampler", "options", "order"),
    [(heun, {}, 2), (dpm_solver, {}, 2), (dpm_solver, {"order": 1}, 1), (euler, {}, 1)],
)
def test_ode_samplers_converge_at_their_order_on_a_karras_grid(sampler, options, order):
    """Doubling the steps of a karras grid (rho = 7; non-uniform in log-SNR, consecutive steps
    differ by factors 0.6 to 1.6 at these sizes) divides the error against the exact ODE by
    about 2^order: measured 40 -> 80 steps, heun 3.9, DPM-Solver++(2M) 4.4, euler and
    DPM-Solver++(1) 2.0. Heun's average weighted 1/4 : 3/4, or 2M's correction 1/(4r) in place
    of 1/(2r) (Lu et al. 2022, DPM-Solver++ Algorithm 2), make the method first order."""
    ratio = error(sampler, 40, "karras", **options) / error(sampler, 80, "karras", **options)
    if order == 2:
        assert ratio > 3.3, ratio
    else:
        assert 1.7 < ratio < 2.3, ratio


def test_dpm_solver_2m_is_algorithm_2_of_dpm_solver_pp():
    """Every step of dpm_solver (order 2) on non-uniform grids equals DPM-Solver++(2M) (Lu et
    al. 2022, Algorithm 2) written here in the VE view: with lambda = -log sigma, h_i =
    lambda_i - lambda_{i-1} and the denoised estimates D_i,

        x~_i = (sigma_i / sigma_{i-1}) x~_{i-1} + (1 - sigma_i / sigma_{i-1}) Dhat_i
        Dhat_i = D_{i-1} + h_i / (2 h_{i-1}) (D_{i-1} - D_{i-2})    (D_{i-1} at the first step)

    (the paper's (1 + 1 / (2 r)) D_{i-1} - 1 / (2 r) D_{i-2} with r = h_{i-1} / h_i), then D at
    the last timestep. On these grids h_i / h_{i-1} runs from 0.78 to 4.6, so swapping r for
    1 / r, or halving the correction, changes the result by far more than rounding."""
    for steps, spacing in [(6, "karras"), (8, "even"), (5, "trailing")]:
        out, timesteps = run(dpm_solver, steps, spacing)
        sigmas = [sigma(t) for t in timesteps]
        lambdas = [-math.log(s) for s in sigmas]
        x = X_T / math.sqrt(float(ABARS[timesteps[0]]))
        d_prev = None
        for i in range(1, len(sigmas)):
            d = denoiser(x, sigmas[i - 1])
            d_hat = d
            if d_prev is not None:
                h, h_prev = lambdas[i] - lambdas[i - 1], lambdas[i - 1] - lambdas[i - 2]
                d_hat = d + h / (2 * h_prev) * (d - d_prev)
            ratio = sigmas[i] / sigmas[i - 1]
            x = ratio * x + (1 - ratio) * d_hat
            d_prev = d
        torch.testing.assert_close(out, denoiser(x, sigmas[-1]), rtol=1e-10, atol=1e-12)


def test_heun_steps_are_the_trapezoid_rule_in_one_over_sigma():
    """Every step of heun equals Heun's method (an Euler predictor, then the trapezoid rule)
    on the ODE in the variables u = 1 / sigma, y = x~ / sigma, where dy/du = D(x~, sigma)
    (samplers.ode.heun; the exponential-integrator form, Lu et al. 2022, DPM-Solver++(2S) with
    r = 1): the proposal x~_p = x~ + (sigma' - sigma) (x~ - D) / sigma, then
    y' = y + (u' - u) (D + D(x~_p, sigma')) / 2, and D at the last timestep. A weighted average
    of the two estimates is not the trapezoid rule."""
    for steps, spacing in [(5, "karras"), (6, "even")]:
        out, timesteps = run(heun, steps, spacing)
        sigmas = [sigma(t) for t in timesteps]
        x = X_T / math.sqrt(float(ABARS[timesteps[0]]))
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            d = denoiser(x, s)
            proposal = x + (s_next - s) * (x - d) / s
            y = x / s + (1 / s_next - 1 / s) * (d + denoiser(proposal, s_next)) / 2
            x = s_next * y
        torch.testing.assert_close(out, denoiser(x, sigmas[-1]), rtol=1e-10, atol=1e-12)
