"""Augmentations applied by the trainer to whole batches, so they are reproducible from its
generator (datasets stay deterministic and never augment)."""

import torch


def random_hflip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of a [B, C, H, W] batch left-right with probability 0.5.

    The coin flips come from `generator` (on its own device), so the same generator state gives
    the same flips whatever device the batch is on.
    """
    flip = torch.rand(batch.shape[0], generator=generator, device=generator.device) < 0.5
    flip = flip.to(batch.device).view(-1, *([1] * (batch.dim() - 1)))
    return torch.where(flip, batch.flip(-1), batch)
