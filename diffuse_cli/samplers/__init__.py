"""Samplers: functions that turn noise x_T into samples x_0 with a trained model.

They import nothing from diffuse_cli except diffusion/.
"""

from .ddim import ddim
from .ddpm import ddpm
from .noise import GeneratorNoise, PerSampleNoise, as_noise_source
from .registry import SAMPLERS, get_sampler

__all__ = [
    "SAMPLERS",
    "GeneratorNoise",
    "PerSampleNoise",
    "as_noise_source",
    "ddim",
    "ddpm",
    "get_sampler",
]
