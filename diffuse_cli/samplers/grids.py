"""Which of a diffusion's timesteps a sampler visits, for a budget of `steps`.

Besides the spacings of respace.SPACINGS (even, linspace, leading, trailing: uniform in t), two
spacings place the timesteps by noise level sigma_t = sqrt((1 - abar_t) / abar_t), from
sigma_{T-1} down to sigma_0, each target rounded to the timestep with the nearest log sigma:

    karras: sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho, rho = 7
            (Karras et al. 2022, EDM eq. 5), dense at low noise, for euler and heun;
    logsnr: uniform in lambda = -log sigma (Lu et al. 2022, DPM-Solver sec. 3.3, "logSNR").

Both keep T - 1 and 0, so a sampler's last step goes from sigma_0 to sigma = 0 (or, for ddpm and
ddim, returns the x0 predicted at t = 0).
"""

import math

from ..diffusion import GaussianDiffusion, space_timesteps
from ..diffusion.respace import SPACINGS as T_SPACINGS

SIGMA_SPACINGS = ("karras", "logsnr")
SPACINGS = (*sorted(T_SPACINGS), *SIGMA_SPACINGS)
RHO = 7.0


def sampling_timesteps(diffusion: GaussianDiffusion, steps: int, spacing: str) -> list[int]:
    """`steps` unique sorted indices into the diffusion's tables, chosen by `spacing` (SPACINGS).

    Raises:
        ValueError: an unknown spacing or steps outside 1..T (the message of space_timesteps).
    """
    T = diffusion.num_timesteps
    if spacing not in SPACINGS:
        choices = ", ".join(sorted(SPACINGS))
        raise ValueError(f"Unknown timestep spacing {spacing!r}; valid choices are: {choices}.")
    if spacing not in SIGMA_SPACINGS:
        return space_timesteps(T, steps, spacing)
    space_timesteps(T, steps, "even")  # the same check of steps
    log_sigmas = [0.5 * math.log((1 - a) / a) for a in diffusion.alphas_cumprod.tolist()]
    hi, lo = log_sigmas[-1], log_sigmas[0]
    if steps == 1:
        targets = [hi]
    elif spacing == "karras":
        a, b = math.exp(hi) ** (1 / RHO), math.exp(lo) ** (1 / RHO)
        targets = [RHO * math.log(a + i / (steps - 1) * (b - a)) for i in range(steps)]
    else:
        targets = [hi + i / (steps - 1) * (lo - hi) for i in range(steps)]
    # log sigma_t increases with t: take the nearest, then keep the indices unique and in range.
    nearest = [min(range(T), key=lambda t, s=s: abs(log_sigmas[t] - s)) for s in targets]
    kept = sorted(nearest)
    for i in range(1, steps):
        kept[i] = max(kept[i], kept[i - 1] + 1)
    for i in range(steps - 1, -1, -1):
        kept[i] = min(kept[i], T - steps + i)
    return kept
