"""Euler and Heun on the probability-flow ODE of a DDPM (Song et al. 2021, "Score-Based
Generative Modeling through SDEs"; Karras et al. 2022, "Elucidating the Design Space", EDM).

A VP diffusion x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, rescaled to x~ = x_t / sqrt(abar_t),
is the VE process x~ = x0 + sigma eps with sigma_t = sqrt((1 - abar_t) / abar_t), and its
probability-flow ODE is simply

    dx~ / dsigma = eps(x_t, t) = (x~ - x0(x_t, t)) / sigma                   (EDM eq. 3-4, app. B.3)

The network takes integer timesteps, so these samplers walk a grid of the diffusion's own
timesteps: `steps` of them chosen by `spacing` (grids.sampling_timesteps), then sigma = 0. The
last step, from the smallest kept timestep to sigma = 0, is an Euler step that returns the
predicted x0 there, exactly as DDIM ends. All steps are written back in x_t, with float64
coefficients, so nothing is ever divided by a tiny sqrt(abar_T).

Euler on this ODE is DDIM with eta = 0 (Song et al. 2021 "DDIM", sec. 4.3; EDM app. B.3): the
two samplers agree on the same grid.
"""

import torch

from ..diffusion import GaussianDiffusion
from .grids import sampling_timesteps
from .noise import as_noise_source
from .steps import sampling_progress


def timestep_grid(diffusion: GaussianDiffusion, steps: int, spacing: str) -> list[int]:
    """The diffusion's timesteps (indices into its tables) an ODE sampler visits, largest first:
    `steps` of them chosen by `spacing`; the solver then steps from the last one to sigma = 0."""
    return sorted(sampling_timesteps(diffusion, steps, spacing), reverse=True)


def denoise(model, diffusion, x, index, clip_denoised, model_kwargs):
    """One network evaluation at the diffusion's timestep `index` (an int): (x0, eps), both like
    x, from the prediction type; with clip_denoised x0 is clipped to [-1, 1] and eps recomputed
    from it (as DDIM does), so that x = sqrt(abar) x0 + sqrt(1 - abar) eps still holds."""
    t = torch.full((x.shape[0],), index, dtype=torch.int64, device=x.device)
    out = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
    return out["pred_x0"], out["pred_eps"]


def ode_coefficients(abar: float, abar_next: float):
    """(scale, sqrt(abar_next)): the Euler step x~' = x~ + (sigma' - sigma) eps written in x_t is
    x' = scale x + sqrt(abar') (sigma' - sigma) eps with scale = sqrt(abar' / abar)."""
    return (abar_next / abar) ** 0.5, abar_next**0.5


def sigma_of(abar: float) -> float:
    """sigma = sqrt((1 - abar) / abar), the noise level of x / sqrt(abar); 0 when abar = 1."""
    return ((1.0 - abar) / abar) ** 0.5


def grid_abars(diffusion: GaussianDiffusion, grid: list[int]) -> list[float]:
    """abar at each grid timestep, then 1.0 (sigma = 0) for the end of the last step."""
    return [float(diffusion.alphas_cumprod[i]) for i in grid] + [1.0]


@torch.no_grad()
def euler(
    model,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    *,
    steps: int,
    noise=None,
    spacing: str = "even",
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler on the probability-flow ODE in sigma (EDM Algorithm 1 without the Heun correction),
    `steps` network evaluations; the same as DDIM with eta = 0 on the same grid.

    Args:
        model, diffusion, x_T, steps, noise, spacing, clip_denoised, model_kwargs, progress:
            as in samplers.ddpm; deterministic, so `noise` is not used.

    Returns:
        x_0, a tensor like x_T.
    """
    as_noise_source(noise, x_T.shape[0], x_T.device)  # same argument checks as every sampler
    grid = timestep_grid(diffusion, steps, spacing)
    abars = grid_abars(diffusion, grid)
    x = x_T
    for j in sampling_progress(range(len(grid)), progress):
        x0, eps = denoise(model, diffusion, x, grid[j], clip_denoised, model_kwargs)
        if j == len(grid) - 1:
            return x0
        x = euler_step(x, eps, abars[j], abars[j + 1])
    return x


def euler_step(x, eps, abar, abar_next):
    """x at abar_next from x at abar and dx~/dsigma = eps, in the x_t scaling."""
    scale, root = ode_coefficients(abar, abar_next)
    return scale * x + root * (sigma_of(abar_next) - sigma_of(abar)) * eps


@torch.no_grad()
def heun(
    model,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    *,
    steps: int,
    noise=None,
    spacing: str = "even",
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (EDM Algorithm 1 with S_churn = 0,
    on the diffusion's own timesteps): an Euler proposal to sigma', a second evaluation there,
    and the step taken with the average of both; the last step, to sigma = 0, is an Euler step
    (as in EDM). `steps` steps cost 2 * steps - 1 network evaluations.

    Why the average is over the two denoised estimates, x~' = (sigma' / sigma) x~ + (1 - sigma' /
    sigma) (x0 + x0') / 2 with x~ = x / sqrt(abar), rather than over EDM's two slopes: it is
    Heun's rule for x~ / sigma against 1 / sigma (Lu et al. 2022, DPM-Solver++(2S) with r = 1),
    second order like EDM's form, but a convex combination of x~ and denoised estimates, so an
    error of the proposal is never amplified by the large sigma ratios of a short grid, where
    EDM's slope form diverged. Measured: docs/benchmarks/samplers.md ("Heun before the fix").

    Args:
        model, diffusion, x_T, steps, noise, spacing, clip_denoised, model_kwargs, progress:
            as in samplers.ddpm; deterministic, so `noise` is not used.

    Returns:
        x_0, a tensor like x_T.
    """
    as_noise_source(noise, x_T.shape[0], x_T.device)
    grid = timestep_grid(diffusion, steps, spacing)
    abars = grid_abars(diffusion, grid)
    x = x_T
    for j in sampling_progress(range(len(grid)), progress):
        x0, eps = denoise(model, diffusion, x, grid[j], clip_denoised, model_kwargs)
        if j == len(grid) - 1:
            return x0
        proposal = euler_step(x, eps, abars[j], abars[j + 1])
        x0_next, _ = denoise(model, diffusion, proposal, grid[j + 1], clip_denoised, model_kwargs)
        x = denoiser_step(x, 0.5 * (x0 + x0_next), abars[j], abars[j + 1])
    return x


def denoiser_step(x, x0, abar, abar_next):
    """x at abar_next from x at abar for a denoised estimate x0 held fixed over the step, in the
    x_t scaling: x~' = (sigma' / sigma) x~ + (1 - sigma' / sigma) x0. With x0 from the model at
    x this is euler_step (the Euler step in sigma is exact for a constant x0)."""
    ratio = sigma_of(abar_next) / sigma_of(abar)
    return ratio * (abar_next / abar) ** 0.5 * x + (1 - ratio) * abar_next**0.5 * x0
