"""A small residual MLP for 2-D toy data, where a UNet has no spatial structure to use."""

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import Dropout
from .embeddings import label_embedding, timestep_embedding


class MLPBlock(nn.Module):
    """Pre-activation residual block; the embedding is added between its two layers so every
    block sees the timestep (and label). Dropout sits before the second layer, where the UNet's
    residual blocks have it."""

    def __init__(self, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(hidden, hidden)
        self.dropout = Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.fc1(F.silu(self.norm(h))) + self.emb_proj(emb)
        return h + self.fc2(self.dropout(F.silu(r)))


class MLP(nn.Module):
    """Timestep- (and optionally class-) conditioned MLP: x [B, dim], t [B], y int64 [B]
    -> [B, out_dim or dim]. The last layer is zero-initialised so the untrained net outputs 0,
    as the UNet does; `dropout` acts in every block, `timestep_scale` multiplies t, as the
    UNet's."""

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        num_layers: int = 4,
        time_embed_dim: int = 128,
        out_dim: int | None = None,
        num_classes: int | None = None,
        timestep_scale: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.timestep_scale = timestep_scale  # as the UNet's
        self.out_dim = out_dim or dim
        self.time_embed_dim = time_embed_dim
        self.num_classes = num_classes
        self.time_embed = nn.Sequential(
            nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.label_embed = label_embedding(num_classes, hidden)
        self.in_proj = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(MLPBlock(hidden, dropout) for _ in range(num_layers))
        self.out_norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, self.out_dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.time_embed(
            timestep_embedding(t, self.time_embed_dim, scale=self.timestep_scale).to(
                self.in_proj.weight.dtype
            )
        )
        if self.label_embed is not None:
            if y is None:
                raise ValueError("this MLP is class-conditional: pass labels y")
            emb = emb + self.label_embed(y)
        elif y is not None:
            raise ValueError("labels y were given to an unconditional MLP (num_classes=None)")
        emb = F.silu(emb)
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out_proj(F.silu(self.out_norm(h)))
