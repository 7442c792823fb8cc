"""Annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of
the Data Distribution", NCSN, Algorithm 1), for score models of the noised data x0 + sigma z.

For noise levels sigma_1 > sigma_2 > ... > sigma_L and each level i, `steps_per_level` steps of

    x <- x + (alpha_i / 2) s(x, sigma_i) + sqrt(alpha_i) z,  alpha_i = epsilon sigma_i^2 / sigma_L^2

then optionally one denoising step x <- x + sigma_L^2 s(x, sigma_L) (Tweedie's formula, the
E[x0 | x] at the last level; Jolicoeur-Martineau et al. 2021, "Adversarial score matching and
improved sampling for image generation").

Step-size convention: this is the update of the NCSN paper, Algorithm 1, with alpha_i the variance
of the injected noise. The NCSN/NCSNv2 reference code and the Langevin corrector of Song et al.
2021 (Algorithm 4-5) write the same update as x + e s + sqrt(2 e) z, so their step e (the code's
`step_lr`) is alpha / 2: epsilon here is twice their step_lr. We keep the paper's alpha_i.
The released NCSN code samples CIFAR-10 with step_lr = 2e-5 at sigma_L = 0.01, which is
epsilon = 4e-5 = 0.4 sigma_L^2 here, while the paper's text gives epsilon = 2e-5 for Algorithm 1;
`langevin` defaults to the step that made the published samples, epsilon = 0.4 sigma_L^2.
"""

import torch
from tqdm.auto import tqdm

from ..diffusion import NoiseLevels
from .noise import as_noise_source
from .options import check_options

# alpha_L / sigma_L^2 by default: NCSN's released code (step_lr 2e-5 at sigma_L = 0.01, see above).
DEFAULT_STEP_RATIO = 0.4


@torch.no_grad()
def annealed_langevin(
    score_fn,
    sigmas,
    x: torch.Tensor,
    *,
    steps_per_level: int,
    epsilon: float,
    denoise: bool = True,
    noise=None,
    progress: bool = False,
) -> torch.Tensor:
    """Annealed Langevin dynamics from the initial x (NCSN Algorithm 1).

    Args:
        score_fn: score_fn(x, i) -> an estimate of grad log p_{sigma_i}(x) like x, where i is an
            int64 tensor [B] filled with the level index (0 = sigma_1, the largest); an NCSN
            network conditioned on the level index fits as is.
        sigmas: the noise levels, decreasing, a sequence or 1-D tensor of length L >= 1.
        x: the initial samples [B, ...] (NCSN: uniform noise; any start works for large sigma_1).
        steps_per_level: Langevin steps T at each level, >= 1.
        epsilon: the step size at the last level, alpha_L, > 0.
        denoise: end with x + sigma_L^2 s(x, sigma_L) (one more score evaluation).
        noise: a NoiseSource, a torch.Generator or None (global RNG), see samplers.noise.
        progress: show a tqdm progress bar over the levels.

    Returns:
        the samples, like x. The score is evaluated L * steps_per_level (+ 1 with denoise) times.
    """
    sigmas = [float(s) for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)]
    if not sigmas or any(s <= 0 for s in sigmas) or sorted(sigmas, reverse=True) != sigmas:
        raise ValueError(f"sigmas must be positive and decreasing, got {sigmas}.")
    check_options(steps_per_level=steps_per_level, epsilon=epsilon, denoise=denoise)
    noise = as_noise_source(noise, x.shape[0], x.device)
    last = sigmas[-1]
    for i in tqdm(range(len(sigmas)), desc="langevin", disable=not progress, leave=False):
        level = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
        alpha = epsilon * sigmas[i] ** 2 / last**2
        for _ in range(steps_per_level):
            x = x + (alpha / 2) * score_fn(x, level) + alpha**0.5 * noise.randn_like(x)
    if denoise:
        level = torch.full((x.shape[0],), len(sigmas) - 1, dtype=torch.int64, device=x.device)
        x = x + last**2 * score_fn(x, level)
    return x


@torch.no_grad()
def langevin(
    model,
    levels: NoiseLevels,
    x_T: torch.Tensor,
    *,
    steps: int,
    noise=None,
    spacing: str = "even",
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = False,
    steps_per_level: int = 100,
    epsilon: float | None = None,
    denoise: bool = True,
) -> torch.Tensor:
    """Annealed Langevin dynamics for an NCSN run, with the signature every sampler has:
    L * steps_per_level (+ 1 with denoise) network evaluations.

    The chain starts at sigma_1 x_T, a draw from N(0, sigma_1^2 I), which is the noised data
    distribution p_{sigma_1} when sigma_1 is large against the data (the prior of the VE SDE,
    Song et al. 2021; NCSN itself starts from uniform noise).

    Args:
        model: model(x, level index int64 [B], **model_kwargs) -> output, read by `levels`.
        levels: the run's diffusion.NoiseLevels.
        x_T: standard normal noise [B, ...].
        steps: must be L: the chain visits every level the network was trained on.
        noise, model_kwargs, progress: as in samplers.ddpm; `spacing` is not used.
        clip_denoised: clip the result to [-1, 1].
        steps_per_level: T in Algorithm 1, >= 1.
        epsilon: alpha_L, > 0; None takes DEFAULT_STEP_RATIO * sigma_L^2.

    Returns:
        the samples, like x_T.
    """
    if steps != levels.num_timesteps:
        raise ValueError(
            f"langevin visits all {levels.num_timesteps} noise levels, got steps={steps}."
        )
    sigmas = levels.sigmas
    if epsilon is None:
        epsilon = DEFAULT_STEP_RATIO * float(sigmas[-1]) ** 2
    x = annealed_langevin(
        lambda x, i: levels.score(model, x, i, model_kwargs),
        sigmas,
        float(sigmas[0]) * x_T,
        steps_per_level=steps_per_level,
        epsilon=epsilon,
        denoise=denoise,
        noise=noise,
        progress=progress,
    )
    return x.clamp(-1.0, 1.0) if clip_denoised else x
