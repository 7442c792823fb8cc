"""Timestep embeddings shared by the networks."""

import math

import torch
from torch import nn


def timestep_embedding(
    t: torch.Tensor,
    dim: int,
    max_period: float = 10000.0,
    scale: float = 1.0,
    freq_shift: float = 0.0,
) -> torch.Tensor:
    """Sinusoidal embedding of (integer) timesteps, as in Transformers and Ho et al. 2020.

    Frequencies are computed on the fly rather than stored as a buffer so the networks build on
    the meta device and their state dicts hold only learned weights.

    t: [B] timesteps (any numeric dtype). Returns float32 [B, dim]: [cos(t f), sin(t f)] with
    frequencies f_i = max_period^(-i / (half - freq_shift)); an odd dim is zero-padded.
    freq_shift = 1 is the TensorFlow DDPM's embedding (diffusers' freq_shift), whose lowest
    frequency is exactly 1 / max_period.
    """
    half = dim // 2
    divisor = half - freq_shift if freq_shift else half
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / divisor
    )
    args = (t.float() * scale)[:, None] * freqs[None]  # scale: see UNet's timestep_scale
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def label_embedding(num_classes: int | None, dim: int) -> nn.Embedding | None:
    """The class-label embedding of a conditional network (None: unconditional). It has
    num_classes + 1 rows: the last is the learned null label of classifier-free guidance."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be null (unconditional) or >= 1, not {num_classes!r}")
    return nn.Embedding(num_classes + 1, dim)
