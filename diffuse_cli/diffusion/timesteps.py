"""Training timestep samplers: which t each example is noised to."""

from __future__ import annotations

import torch


class UniformSampler:
    """t ~ Uniform{0, ..., T-1}; every example has importance weight 1 (Ho et al. 2020, alg. 1)."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t int64 [B], weights float32 [B])."""
        t = torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)
        return t, torch.ones(batch_size, device=device)
