"""Denoising networks: a UNet for images and an MLP for 2-D toy data. They take plain
arguments; the API layer maps configs onto them."""

from .embeddings import timestep_embedding
from .mlp import MLP
from .unet import UNet

__all__ = ["MLP", "UNet", "timestep_embedding"]
