"""Samplers: functions that turn noise x_T into samples x_0 with a trained model.

They import nothing from diffuse_cli except diffusion/. Their options are defined once, in
options.py; the loop pieces several share (respacing, the ancestral and DDIM steps) in steps.py.
"""

from .ddim import ddim
from .ddpm import ddpm
from .dpm_solver import dpm_solver
from .langevin import annealed_langevin, langevin
from .nfe import NFECounter
from .noise import GeneratorNoise, PerSampleNoise, as_noise_source
from .ode import euler, heun
from .options import EDM_SAMPLER_OPTIONS, SAMPLER_OPTIONS, check_options, option_names
from .pc import pc
from .registry import EDM_SAMPLERS, SAMPLERS, SCORE_SAMPLERS, evaluations, get_sampler

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
    "option_names",
    "pc",
]
