"""Networks: the denoising UNet for images and MLP for 2-D toy data, and the noisy-image
classifier (the UNet's encoder half) for classifier guidance. They take plain
arguments; the API layer maps configs onto them."""

from .classifier import EncoderClassifier
from .embeddings import timestep_embedding
from .mlp import MLP
from .unet import UNet, UNetEncoder

__all__ = ["MLP", "EncoderClassifier", "UNet", "UNetEncoder", "timestep_embedding"]
