"""DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 and 16)."""

import torch

from ..diffusion import GaussianDiffusion, gather
from .ddpm import respaced, reverse_indices
from .noise import as_noise_source


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
    if not 0 <= eta <= 1:
        raise ValueError(f"DDIM needs 0 <= eta <= 1, got eta={eta}.")
    sub = respaced(diffusion, steps, spacing)
    noise = as_noise_source(noise, x_T.shape[0], x_T.device)
    abar, abar_prev = sub.alphas_cumprod, sub.alphas_cumprod_prev  # float64 [S]
    sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
    x0_coef = abar_prev.sqrt()
    eps_coef = (1 - abar_prev - sigma**2).clamp(min=0).sqrt()  # >= 0 up to rounding at eta 1
    x = x_T
    for i, t in reverse_indices(sub, x, progress):
        out = sub.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        x = gather(x0_coef, t, x) * out["pred_x0"] + gather(eps_coef, t, x) * out["pred_eps"]
        if eta > 0 and i > 0:
            x = x + gather(sigma, t, x) * noise.randn_like(x)
    return x
