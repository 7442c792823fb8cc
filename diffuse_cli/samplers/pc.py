"""Predictor-corrector sampling for DDPM models (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", sec. 4.2, Algorithm 1 with the Langevin corrector of Algorithm 5).

Each step is a predictor step from kept timestep t_i to t_{i-1} of the respaced diffusion (an
ancestral step, Ho et al. 2020 Algorithm 2, or a DDIM step with eta = 0), followed by
`corrector_steps` Langevin steps at t_{i-1} with the model's score

    s(x, t) = -eps(x, t) / sqrt(1 - abar_t)                                 (Song eq. 12 / Tweedie)

and the step size of Algorithm 5, which sets the signal-to-noise ratio ||e s|| / ||sqrt(2 e) z||
to `snr`: e = 2 alpha_t (snr ||z|| / ||s||)^2, x <- x + e s + sqrt(2 e) z, with alpha_t = 1 - beta_t
of the respaced diffusion.

One deviation: the ratio ||z|| / ||s|| is replaced by its value for a model whose eps has the
norm of Gaussian noise, ||s|| = ||eps|| / sqrt(1 - abar_t) ~ ||z|| / sqrt(1 - abar_t), so

    e_t = 2 alpha_t snr^2 (1 - abar_t)

The reference code averages the norms over the batch, which makes a sample depend on its batch;
per-sample norms do not, but in low dimensions ||s|| is often near 0 (a sample at a mode) and the
step explodes. In high dimensions the norms concentrate and the three agree. The last predictor
step lands on x0 (as in samplers.ddpm) and is not corrected.
"""

import torch

from ..diffusion import GaussianDiffusion, gather
from .noise import as_noise_source
from .options import check_options
from .steps import DDIMStep, ancestral_step, respaced, reverse_indices


@torch.no_grad()
def pc(
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
    predictor: str = "ddpm",
    corrector_steps: int = 1,
    snr: float = 0.16,
) -> torch.Tensor:
    """Predictor-corrector sampling; steps + corrector_steps * (steps - 1) network evaluations.

    Args:
        model, diffusion, x_T, steps, noise, spacing, clip_denoised, model_kwargs, progress:
            as in samplers.ddpm.
        predictor: "ddpm" (ancestral step) or "ddim" (deterministic DDIM step).
        corrector_steps: Langevin steps after each predictor step, >= 0 (0: the predictor alone).
        snr: the target signal-to-noise ratio r of Algorithm 5, > 0 (0.16 in Song et al.'s
            CIFAR-10 settings).

    Returns:
        x_0, a tensor like x_T.
    """
    check_options(predictor=predictor, corrector_steps=corrector_steps, snr=snr)
    sub = respaced(diffusion, steps, spacing)
    noise = as_noise_source(noise, x_T.shape[0], x_T.device)
    predict = predictor_step(predictor, sub)
    x = x_T
    for i, t in reverse_indices(sub, x, progress):
        out = sub.p_mean_variance(model, x, t, clip_denoised, model_kwargs)
        x = predict(x, out, i, t, noise)
        if i > 0:
            for _ in range(corrector_steps):
                x = langevin_corrector_step(
                    model, sub, x, t - 1, snr, noise, clip_denoised, model_kwargs
                )
    return x


def predictor_step(predictor: str, diffusion: GaussianDiffusion):
    """The predictor's update (x, out, i, t, noise) -> x at the next kept timestep: samplers.ddpm's
    ancestral step or samplers.ddim's step with eta = 0."""
    if predictor == "ddim":
        return DDIMStep(diffusion, eta=0.0)
    return lambda x, out, i, t, noise: ancestral_step(out["mean"], out["log_variance"], i, noise)


def langevin_corrector_step(model, diffusion, x, t, snr, noise, clip_denoised, model_kwargs):
    """One Langevin step at indices t [B] of `diffusion` (Song et al. 2021, Algorithm 5, with the
    step size of the module docstring)."""
    eps = diffusion.p_mean_variance(model, x, t, clip_denoised, model_kwargs)["pred_eps"]
    one_minus_abar = gather(1 - diffusion.alphas_cumprod, t, x)
    score = -eps / one_minus_abar.sqrt()
    z = noise.randn_like(x)
    step = 2 * gather(diffusion.alphas, t, x) * snr**2 * one_minus_abar
    return x + step * score + (2 * step).sqrt() * z
