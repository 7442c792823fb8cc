"""A diffusion over a subset of timesteps, for sampling in fewer steps than training used.

Keeping timesteps tau_0 < tau_1 < ... < tau_{S-1} of a diffusion with cumulative products abar
defines a new diffusion with S steps and betas'_i = 1 - abar[tau_i] / abar[tau_{i-1}]
(abar[tau_{-1}] = 1), so that its alphas_cumprod are exactly abar[tau_i]: the marginals
q(x_tau | x_0) are unchanged (Nichol & Dhariwal 2021, sec. 4; Song et al. 2021, sec. 4.2).
The model still receives the original timesteps through timestep_map.
"""

import numbers

import numpy as np
import torch

from .gaussian import GaussianDiffusion


def _linspace(num_timesteps: int, steps: int) -> list[int]:
    """round(linspace(0, T - 1, steps)), diffusers' "linspace" spacing."""
    return np.linspace(0, num_timesteps - 1, steps).round().astype(np.int64).tolist()


def _leading(num_timesteps: int, steps: int) -> list[int]:
    """arange(steps) * (T // steps), diffusers' "leading" spacing (steps_offset 0)."""
    return (np.arange(steps) * (num_timesteps // steps)).tolist()


def _trailing(num_timesteps: int, steps: int) -> list[int]:
    """round(arange(T, 0, -T / steps)) - 1, diffusers' "trailing" spacing; always keeps T - 1.

    The values are computed as T - i * T / steps for i < steps, which is what arange yields but
    without its float-dependent length.
    """
    values = num_timesteps - np.arange(steps) * (num_timesteps / steps)
    return sorted((values.round().astype(np.int64) - 1).tolist())


def _even(num_timesteps: int, steps: int) -> list[int]:
    """Evenly strided from 0 to T - 1 inclusive with the fractional stride (T - 1) / (steps - 1),
    each rounded: improved-diffusion's space_timesteps with one section."""
    stride = (num_timesteps - 1) / (steps - 1) if steps > 1 else 1.0
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    return kept


SPACINGS = {"linspace": _linspace, "leading": _leading, "trailing": _trailing, "even": _even}


def space_timesteps(num_timesteps: int, steps: int, spacing: str = "even") -> list[int]:
    """Which of the timesteps 0..T-1 to keep when sampling with `steps` steps.

    Args:
        num_timesteps: T of the diffusion being respaced.
        steps: how many timesteps to keep, 1 <= steps <= T.
        spacing: "linspace", "leading", "trailing" (as in diffusers' schedulers) or "even".

    Returns:
        `steps` unique sorted ints in [0, T - 1]; [T - 1] for one step, whatever the spacing.

    Raises:
        ValueError: for an unknown spacing or a steps outside 1..T.
    """
    if spacing not in SPACINGS:
        choices = ", ".join(sorted(SPACINGS))
        raise ValueError(f"Unknown timestep spacing {spacing!r}; valid choices are: {choices}.")
    valid = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
    if not valid or not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"Cannot sample with {steps!r} steps from a diffusion with {num_timesteps} timesteps; "
            f"steps must be an integer from 1 to {num_timesteps}."
        )
    if steps == 1:  # one step starts from pure noise: even/leading/linspace would keep t = 0
        return [int(num_timesteps) - 1]  # and hand back the noise as the sample
    kept = sorted(int(t) for t in SPACINGS[spacing](int(num_timesteps), int(steps)))
    if len(set(kept)) != steps or kept[0] < 0 or kept[-1] > num_timesteps - 1:
        raise AssertionError(f"spacing {spacing!r} produced invalid timesteps {kept}")
    return kept


def respace(diffusion: GaussianDiffusion, use_timesteps) -> GaussianDiffusion:
    """The diffusion restricted to the timesteps `use_timesteps` (indices into `diffusion`).

    Args:
        diffusion: the diffusion to respace (itself possibly respaced).
        use_timesteps: iterable of ints in [0, T - 1]; order and duplicates do not matter.

    Returns:
        A GaussianDiffusion with len(set(use_timesteps)) steps, betas'_i = 1 - abar[tau_i] /
        abar[tau_{i-1}], the same prediction and variance types, and timestep_map composed with
        the parent's, so the model keeps receiving the original timesteps. If every timestep is
        kept, `diffusion` itself is returned.
    """
    kept = sorted({int(t) for t in use_timesteps})
    T = diffusion.num_timesteps
    if not kept or kept[0] < 0 or kept[-1] >= T:
        raise ValueError(f"use_timesteps must be a non-empty set of integers in [0, {T - 1}].")
    if len(kept) == T:
        return diffusion
    index = torch.tensor(kept, dtype=torch.int64)
    abar = diffusion.alphas_cumprod[index]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return GaussianDiffusion(
        1.0 - abar / abar_prev,
        prediction=diffusion.prediction.name,
        variance=diffusion.variance.name,
        timestep_map=diffusion.timestep_map[index],
    )
