"""DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16)."""

import torch

from ..diffusion import GaussianDiffusion
from .noise import as_noise_source
from .options import check_options
from .steps import DDIMStep, respaced, reverse_indices


@torch.no_grad()
def ddim(
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
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM: over the respaced diffusion, with abar = abar_t and abar' = abar_{t-1} (Song eq. 12),

        x_{t-1} = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')       (Song eq. 16)

    where (x0, eps) come from the model (eps recomputed from the clipped x0 when clipping).
    eta = 0 is deterministic given x_T (the probability-flow ODE discretized); eta = 1 matches
    ancestral sampling with the fixed_small variance. No noise at the last step.

    Args:
        model, diffusion, x_T, steps, noise, spacing, clip_denoised, model_kwargs, progress:
            as in samplers.ddpm.
        eta: the noise scale, in [0, 1]: above 1 the direction term sqrt(1 - abar' - sigma^2)
            would be imaginary, and the marginals of x_t could not be kept.

    Returns:
        x_0, a tensor like x_T.
    """
    check_options(eta=eta)
    sub = respaced(diffusion, steps, spacing)
    noise = as_noise_source(noise, x_T.shape[0], x_T.device)
    step = DDIMStep(sub, eta)
    x = x_T
    for i, t in reverse_indices(sub, x, progress):
        out = sub.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        x = step(x, out, i, t, noise)
    return x
