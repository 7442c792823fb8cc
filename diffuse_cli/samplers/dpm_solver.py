"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), the multistep second-order solver 2M of Algorithm 2, data-prediction form.

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and the half log-SNR
lambda_t = log(alpha_t / sigma_t), the probability-flow ODE written for the data prediction
x0(x_t, t) is solved exactly in its linear part; a step from s to t with h = lambda_t - lambda_s
is (Lu et al. 2022, eq. 9 and Algorithm 2)

    x_t = (sigma_t / sigma_s) x_s - alpha_t (exp(-h) - 1) D
    D = x0_s                                          (first order: exactly DDIM with eta = 0)
    D = (1 + 1 / (2 r)) x0_s - 1 / (2 r) x0_prev,     r = h_prev / h   (2M: reuses the previous
                                                                        evaluation, no extra NFE)

The grid is that of the ODE samplers (samplers.ode.timestep_grid): `steps` timesteps chosen by
`spacing`, then sigma = 0. The first step is first order (no previous evaluation yet) and so is
the last, to sigma = 0, where h is infinite and the update returns x0 (diffusers' "lower order
final"); as in DDIM, the result is the predicted x0 at the smallest kept timestep. `steps`
network evaluations.
"""

import math

import torch

from ..diffusion import GaussianDiffusion
from .noise import as_noise_source
from .ode import denoise, timestep_grid
from .options import check_options
from .steps import sampling_progress


@torch.no_grad()
def dpm_solver(
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
    order: int = 2,
) -> torch.Tensor:
    """DPM-Solver++(2M) (order = 2) or DPM-Solver++(1) = DDIM (order = 1), `steps` network
    evaluations; deterministic given x_T.

    Args:
        model, diffusion, x_T, steps, noise, spacing, clip_denoised, model_kwargs, progress:
            as in samplers.ddpm; `noise` is not used.
        order: 1 or 2.

    Returns:
        x_0, a tensor like x_T.
    """
    check_options(order=order)
    as_noise_source(noise, x_T.shape[0], x_T.device)
    grid = timestep_grid(diffusion, steps, spacing)
    abars = [float(diffusion.alphas_cumprod[i]) for i in grid]
    lambdas = [0.5 * math.log(a / (1.0 - a)) for a in abars]
    x, x0_prev, h_prev = x_T, None, None
    for j in sampling_progress(range(len(grid)), progress):
        x0, _ = denoise(model, diffusion, x, grid[j], clip_denoised, model_kwargs)
        if j == len(grid) - 1:
            return x0  # the step to sigma = 0
        a_s, a_t = abars[j], abars[j + 1]
        h = lambdas[j + 1] - lambdas[j]
        d = x0
        if order == 2 and x0_prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        ratio = ((1 - a_t) / (1 - a_s)) ** 0.5
        x = ratio * x - a_t**0.5 * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x
