"""Training timestep samplers: which t each example is noised to, and its importance weight.

A sampler has `sample(batch_size, device, generator=None) -> (t int64 [B], weights float32 [B])`,
`update(t, losses)` (the per-example VLB terms seen at those t; a no-op where unused),
`needs_losses` (whether the trainer must call update) and `state_dict()` / `load_state_dict()`
(plain tensors, saved with checkpoints so that a resumed run draws the same timesteps).
"""

from __future__ import annotations

import torch


class UniformSampler:
    """t ~ Uniform{0, ..., T-1}; every example has importance weight 1 (Ho et al. 2020, alg. 1)."""

    name = "uniform"
    needs_losses = False

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

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class ImportanceSampler:
    """Loss-aware importance sampling of t (Nichol & Dhariwal 2021, sec. 3.3, eq. 18):

        p_t ∝ sqrt(E[L_t^2]),  mixed as (1 - u) p_t + u / T with u = 0.001,

    where E[L_t^2] is the mean of the last `history` values of the VLB term L_t seen at t. Until
    every t has `history` values, t is drawn uniformly. Each example is weighted by
    1 / (T p_t), so that E[w L_t] = (1 / T) sum_t L_t: the weighted loss stays an unbiased
    estimate of the uniform-t loss (improved-diffusion's LossSecondMomentResampler).

    The history is a float64 table [T, history] with a count per t; update() appends in the
    order it is given, so processes that all update with the same gathered (t, loss) pairs keep
    identical histories.
    """

    name = "importance"
    needs_losses = True

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        self.num_timesteps, self.history, self.uniform_prob = num_timesteps, history, uniform_prob
        self.loss_history = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def probabilities(self) -> torch.Tensor:
        """float64 [T]: p_t, uniform during the warm-up."""
        T = self.num_timesteps
        if not self.warmed_up():
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        rms = self.loss_history.pow(2).mean(dim=1).sqrt()
        p = rms / rms.sum() * (1 - self.uniform_prob) + self.uniform_prob / T
        return p / p.sum()

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t int64 [B], weights 1 / (T p_t) float32 [B]), drawn on the CPU and moved to device."""
        p = self.probabilities()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the VLB term losses[i] seen at t[i], in order: a t with a full history drops
        its oldest value."""
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            count = int(self.loss_counts[step])
            if count == self.history:
                self.loss_history[step, :-1] = self.loss_history[step, 1:].clone()
                self.loss_history[step, -1] = loss
            else:
                self.loss_history[step, count] = loss
                self.loss_counts[step] = count + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        history, counts = state["loss_history"], state["loss_counts"]
        if history.shape != self.loss_history.shape or counts.shape != self.loss_counts.shape:
            raise ValueError(
                f"the saved timestep-sampler history has shape {tuple(history.shape)}, but this "
                f"diffusion needs {tuple(self.loss_history.shape)}"
            )
        self.loss_history = history.to(torch.float64).clone()
        self.loss_counts = counts.to(torch.int64).clone()


TIMESTEP_SAMPLERS = {cls.name: cls for cls in (UniformSampler, ImportanceSampler)}


def get_timestep_sampler(name: str, num_timesteps: int):
    """The training timestep sampler called `name`; ValueError naming the valid choices."""
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(
            f"Unknown timestep sampler {name!r}; valid choices are: "
            f"{', '.join(sorted(TIMESTEP_SAMPLERS))}."
        )
    return TIMESTEP_SAMPLERS[name](num_timesteps)
