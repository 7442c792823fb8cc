"""Ancestral sampling (Ho et al. 2020, Algorithm 2), over a respaced diffusion when steps < T."""

import torch

from ..diffusion import GaussianDiffusion
from .noise import as_noise_source
from .steps import ancestral_step, respaced, reverse_indices


@torch.no_grad()
def ddpm(
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
    cond_fn=None,
) -> torch.Tensor:
    """Ancestral sampling: x_{t-1} ~ p(x_{t-1} | x_t) = N(mean, sigma_t^2 I) (Ho et al. 2020,
    Algorithm 2, with the mean of eq. 6-7 at the predicted x0), no noise at the last step.

    With steps < T it samples the respaced diffusion (Nichol & Dhariwal 2021, sec. 4), whose
    sigma_t^2 comes from the respaced betas; the model still sees the original timesteps.

    Args:
        model: model(x_t, timesteps int64 [B], **model_kwargs) -> output [B, ...].
        diffusion: the diffusion the model was trained with.
        x_T: starting noise [B, ...].
        steps: number of denoising steps, 1..T.
        noise: a NoiseSource, a torch.Generator or None (global RNG) for the per-step noise.
        spacing: which timesteps to keep, see samplers.grids.SPACINGS.
        clip_denoised: clip the predicted x0 to [-1, 1] at every step.
        model_kwargs: extra model arguments (e.g. class labels y).
        progress: show a tqdm progress bar.
        cond_fn: classifier guidance (Dhariwal & Nichol 2021, Algorithm 1): cond_fn(x_t,
            original timesteps, **model_kwargs) -> s grad log p(y | x_t), which shifts each mean
            by Sigma times it.

    Returns:
        x_0, a tensor like x_T.

    Runs under torch.no_grad (not inference_mode) so that guidance can re-enable gradients.
    """
    sub = respaced(diffusion, steps, spacing)
    noise = as_noise_source(noise, x_T.shape[0], x_T.device)
    x = x_T
    for i, t in reverse_indices(sub, x, progress):
        out = sub.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        mean = out["mean"]
        if cond_fn is not None:
            shift = cond_fn(x, sub.model_timesteps(t), **(model_kwargs or {}))
            mean = mean + torch.exp(out["log_variance"]) * shift
        x = ancestral_step(mean, out["log_variance"], i, noise)
    return x
