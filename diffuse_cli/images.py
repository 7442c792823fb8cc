"""Turning samples into files: uint8 arrays, image grids and 2-D scatter plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from diffuse_cli.files import replacing


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float images [B, C, H, W] -> uint8 [B, H, W, C], the format evaluators read."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def from_uint8_nhwc(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] -> [-1, 1] float [B, C, H, W] (to_uint8_nhwc gives it back exactly)."""
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def save_grid(x: torch.Tensor, path: Path) -> None:
    """A square-ish grid of [-1, 1] images."""
    from torchvision.utils import save_image

    nrow = max(1, int(math.ceil(math.sqrt(x.shape[0]))))
    with replacing(Path(path)) as tmp:  # a reader never sees half a PNG
        save_image(
            x.detach().float().cpu().clamp(-1, 1),
            tmp,
            nrow=nrow,
            normalize=True,
            value_range=(-1, 1),
            padding=1,
        )


def save_scatter(x: torch.Tensor, path: Path, reference: torch.Tensor | None = None) -> None:
    """A scatter plot of 2-D samples, over the data in grey when `reference` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        r = reference.detach().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="lightgrey", label="data")
    p = x.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    with replacing(Path(path)) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def save_preview(x: torch.Tensor, path: Path, reference: torch.Tensor | None = None) -> None:
    """A grid for images, a scatter plot for 2-D vectors."""
    if x.dim() == 4:
        save_grid(x, path)
    elif x.dim() == 2 and x.shape[1] == 2:
        save_scatter(x, path, reference)
    else:
        raise ValueError(f"no preview for samples of shape {tuple(x.shape)}")
