"""The pieces of a sampling loop that several samplers share: the respaced chain they walk, the
walk itself under a progress bar, and the ancestral and DDIM updates (ddpm and ddim take one
each, pc takes either as its predictor)."""

import torch
from tqdm.auto import tqdm

from ..diffusion import GaussianDiffusion, gather, respace
from .grids import sampling_timesteps


def sampling_progress(indices, progress: bool):
    """`indices`, under a tqdm bar when `progress`."""
    return tqdm(indices, desc="sampling", disable=not progress, leave=False)


def respaced(diffusion: GaussianDiffusion, steps: int, spacing: str) -> GaussianDiffusion:
    """The diffusion a sampler walks: `steps` timesteps chosen by `spacing` (grids.SPACINGS; all
    of them if steps == T, in which case `diffusion` itself is returned)."""
    return respace(diffusion, sampling_timesteps(diffusion, steps, spacing))


def reverse_indices(diffusion: GaussianDiffusion, x: torch.Tensor, progress: bool):
    """Yield (i, t) for i = S-1, ..., 0, t = int64 tensor [B] filled with i on x's device,
    with a tqdm bar if asked."""
    for i in sampling_progress(range(diffusion.num_timesteps - 1, -1, -1), progress):
        yield i, torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)


def ancestral_step(mean: torch.Tensor, log_variance: torch.Tensor, i: int, noise) -> torch.Tensor:
    """A draw from N(mean, exp(log_variance)) (Ho et al. 2020, Algorithm 2), the mean itself at
    the last step (i = 0)."""
    if i == 0:
        return mean
    return mean + torch.exp(0.5 * log_variance) * noise.randn_like(mean)


class DDIMStep:
    """The DDIM update over a (respaced) diffusion, with abar = abar_t, abar' = abar_{t-1}:

        x_{t-1} = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')       (Song eq. 12, 16)

    with no noise at the last step; the float64 coefficients are computed once."""

    def __init__(self, diffusion: GaussianDiffusion, eta: float):
        abar, abar_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev  # float64 [S]
        self.eta = eta
        self.sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        self.x0_coef = abar_prev.sqrt()
        # >= 0 up to rounding at eta 1
        self.eps_coef = (1 - abar_prev - self.sigma**2).clamp(min=0).sqrt()

    def __call__(self, x: torch.Tensor, out: dict, i: int, t: torch.Tensor, noise):
        """x_{t-1} from x = x_t and out = p_mean_variance(x_t, t) (its pred_x0 and pred_eps)."""
        x0_part = gather(self.x0_coef, t, x) * out["pred_x0"]
        x_next = x0_part + gather(self.eps_coef, t, x) * out["pred_eps"]
        if self.eta > 0 and i > 0:
            x_next = x_next + gather(self.sigma, t, x) * noise.randn_like(x_next)
        return x_next
