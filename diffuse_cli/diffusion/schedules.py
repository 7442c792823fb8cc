"""Noise schedules: the betas beta_1..beta_T of the forward process, by name.

Every schedule returns a float64 tensor of shape [T] with values in (0, 1). The schedule is the
only thing that differs between, say, DDPM (linear) and improved DDPM (cosine); everything else
in `gaussian.py` is derived from these betas.
"""

import inspect
import math

import torch

REFERENCE_TIMESTEPS = 1000  # the T that Ho et al.'s linear betas 1e-4..0.02 were chosen for


def linear_betas(
    num_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    scale_to_timesteps: bool = False,
):
    """Linear schedule of Ho et al. 2020, sec. 4: beta_t evenly spaced from beta_start to beta_end.

    Args:
        num_timesteps: T, the number of diffusion steps.
        beta_start, beta_end: beta_1 and beta_T (the paper uses 1e-4 and 0.02 with T = 1000).
        scale_to_timesteps: read beta_start and beta_end as the values for T = 1000 and
            multiply both by 1000 / T (improved-diffusion's rule), so that the process ends
            near N(0, I) for any T: with the betas as given, T = 100 leaves abar_T = 0.36.

    Returns:
        float64 tensor [T].
    """
    if scale_to_timesteps:
        scale = REFERENCE_TIMESTEPS / num_timesteps
        if scale != 1 and beta_end < 1.0 <= beta_end * scale:
            raise ValueError(
                f"The linear schedule scaled to T={num_timesteps} would end at beta_T = "
                f"{beta_end} x 1000/T = {beta_end * scale:.3g} >= 1; use more timesteps, the "
                "cosine schedule, or betas as given for this T (schedule.scale_betas=false)."
            )
        beta_start, beta_end = beta_start * scale, beta_end * scale
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"The linear schedule needs 0 < beta_start <= beta_end < 1, "
            f"got beta_start={beta_start} and beta_end={beta_end}."
        )
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """alpha_bar at diffusion time u = t / T in [0, 1]; Nichol & Dhariwal 2021, eq. 17.

    alpha_bar(u) = f(u) / f(0) with f(u) = cos(((u + s) / (1 + s)) * pi / 2)^2; the offset s keeps
    beta_t from being too small near u = 0.
    """
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999):
    """Cosine schedule of Nichol & Dhariwal 2021, sec. 3.2 (eq. 17 and the clipping after it).

    beta_t = min(1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), max_beta) for t = 0..T-1; the
    clipping prevents the singularity at the end of the process (alpha_bar(1) = 0).

    Returns:
        float64 tensor [T].
    """
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"The cosine schedule needs 0 < max_beta < 1, got {max_beta}.")
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(u, s)
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def get_betas(
    name: str,
    num_timesteps: int,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    scale_to_timesteps: bool = False,
    s: float = 0.008,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """The betas of the schedule called `name`, as a float64 tensor [num_timesteps].

    Each schedule receives only the keyword arguments it declares (linear: beta_start, beta_end,
    scale_to_timesteps; cosine: s, max_beta), so one config can hold all of them.

    Raises:
        ValueError: for an unknown name or num_timesteps < 1.
    """
    if name not in SCHEDULES:
        raise ValueError(
            f"Unknown noise schedule {name!r}; valid choices are: {', '.join(sorted(SCHEDULES))}."
        )
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}.")
    schedule = SCHEDULES[name]
    params = {
        "beta_start": beta_start,
        "beta_end": beta_end,
        "scale_to_timesteps": scale_to_timesteps,
        "s": s,
        "max_beta": max_beta,
    }
    accepted = inspect.signature(schedule).parameters
    return schedule(num_timesteps, **{k: v for k, v in params.items() if k in accepted})
