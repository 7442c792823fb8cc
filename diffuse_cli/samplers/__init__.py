"""Samplers: functions that turn noise x_T into samples x_0 with a trained model.

They import nothing from diffuse_cli except diffusion/.
"""

from .ddim import ddim
from .ddpm import ddpm
from .dpm_solver import dpm_solver
from .langevin import annealed_langevin, langevin
from .nfe import NFECounter
from .noise import GeneratorNoise, PerSampleNoise, as_noise_source
from .ode import euler, heun
from .pc import pc
from .registry import (
    EDM_SAMPLER_OPTIONS,
    EDM_SAMPLERS,
    SAMPLER_OPTIONS,
    SAMPLERS,
    SCORE_SAMPLERS,
    check_options,
    evaluations,
    get_sampler,
)

__all__ = [
    "EDM_SAMPLERS",
    "EDM_SAMPLER_OPTIONS",
    "SAMPLERS",
    "SAMPLER_OPTIONS",
    "SCORE_SAMPLERS",
    "GeneratorNoise",
    "NFECounter",
    "PerSampleNoise",
    "annealed_langevin",
    "as_noise_source",
    "check_options",
    "ddim",
    "ddpm",
    "dpm_solver",
    "euler",
    "evaluations",
    "get_sampler",
    "heun",
    "langevin",
    "pc",
]
