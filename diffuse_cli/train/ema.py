"""Moving averages of the weights, kept in float32 whatever the training precision: the classic
exponential EMA and EDM2's power-function EMAs (Karras et al. 2024, sec. 3)."""

from __future__ import annotations

import copy

import torch

from diffuse_cli.posthoc_ema import gamma_of_std, power_beta


def _shadow(model: torch.nn.Module) -> torch.nn.Module:
    """A full copy of the model (buffers included), so it can be sampled from and saved like
    the model itself."""
    return copy.deepcopy(model).float().eval().requires_grad_(False)


@torch.no_grad()
def _blend(shadow: torch.nn.Module, model: torch.nn.Module, weight: float) -> None:
    """shadow <- shadow + weight (model - shadow) on the parameters; buffers are copied."""
    params = [p.detach().float() for p in model.parameters()]
    torch._foreach_lerp_(list(shadow.parameters()), params, weight)
    for b_ema, b in zip(shadow.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


class EMA:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, updated after each optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay={decay} must be in [0, 1)")
        self.decay = decay
        self.model = _shadow(model)

    def update(self, model: torch.nn.Module, step: int | None = None) -> None:
        """After an optimizer step (its number `step` is not needed: the decay is constant)."""
        _blend(self.model, model, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def to(self, device) -> EMA:
        self.model.to(device)
        return self


class PowerEMA:
    """One power-function EMA per relative width sigma_rel in `stds` (EDM2 eq. 5):
    theta_ema <- beta_t theta_ema + (1 - beta_t) theta with beta_t = (1 - 1/t)^(gamma + 1) at
    optimizer step t, so that at every step each is the average of all weights so far under its
    profile. `model` is the first profile's shadow: the one previews and ema.safetensors use."""

    def __init__(self, model: torch.nn.Module, stds: list[float]):
        self.stds = [float(s) for s in stds]
        self.gammas = [gamma_of_std(s) for s in self.stds]
        self.models = [_shadow(model) for _ in self.stds]
        self.model = self.models[0]

    def update(self, model: torch.nn.Module, step: int) -> None:
        """After optimizer step `step` >= 1 (the trainer calls it after a skipped step too:
        the weights of that step are the last ones, and the profile counts every step)."""
        for shadow, gamma in zip(self.models, self.gammas, strict=True):
            _blend(shadow, model, 1.0 - power_beta(step, gamma))

    def profiles(self) -> dict[float, dict[str, torch.Tensor]]:
        """sigma_rel -> that EMA's state dict."""
        return {s: m.state_dict() for s, m in zip(self.stds, self.models, strict=True)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every profile, keys prefixed by profile_prefix(sigma_rel)."""
        return {
            profile_prefix(s) + k: v
            for s, state in self.profiles().items()
            for k, v in state.items()
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for std, shadow in zip(self.stds, self.models, strict=True):
            prefix = profile_prefix(std)
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            shadow.load_state_dict(own)

    def to(self, device) -> PowerEMA:
        for shadow in self.models:
            shadow.to(device)
        return self


def std_label(std: float) -> str:
    """'0.050': how sigma_rel is written in file names and keys (three decimals)."""
    return f"{std:.3f}"


def profile_prefix(std: float) -> str:
    return f"std_{std_label(std)}/"
