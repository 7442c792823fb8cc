"""The mathematics of diffusion models: schedules, the Gaussian diffusion, the noise levels of
score models (NCSN), the EDM formulation, likelihoods, losses and their weighting, respacing
and training timestep samplers.

Pure torch; imports nothing else from diffuse_cli.
"""

from .edm import (
    DEFAULT_SAMPLING_STEPS,
    EDM_SCHEDULES,
    SIGMA_GRIDS,
    EDMDiffusion,
    LogNormalSigmas,
)
from .gaussian import (
    PREDICTIONS,
    VARIANCES,
    GaussianDiffusion,
    Prediction,
    Variance,
    gather,
    mean_flat,
)
from .likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl, quantize
from .losses import LOSSES, WEIGHTED, EDMLoss, get_loss, refused_weighting
from .ncsn import (
    NOISE_LEVEL_SCHEDULES,
    SCORE_PREDICTIONS,
    NoiseLevels,
    geometric_sigmas,
)
from .respace import SPACINGS, respace, space_timesteps
from .schedules import SCHEDULES, get_betas
from .timesteps import TIMESTEP_SAMPLERS, ImportanceSampler, UniformSampler, get_timestep_sampler
from .weighting import WEIGHTINGS, LossWeighting, get_weighting

__all__ = [
    "DEFAULT_SAMPLING_STEPS",
    "EDM_SCHEDULES",
    "SIGMA_GRIDS",
    "EDMDiffusion",
    "EDMLoss",
    "LogNormalSigmas",
    "LOSSES",
    "NOISE_LEVEL_SCHEDULES",
    "PREDICTIONS",
    "SCHEDULES",
    "SCORE_PREDICTIONS",
    "SPACINGS",
    "TIMESTEP_SAMPLERS",
    "VARIANCES",
    "WEIGHTED",
    "WEIGHTINGS",
    "GaussianDiffusion",
    "ImportanceSampler",
    "LossWeighting",
    "NoiseLevels",
    "Prediction",
    "UniformSampler",
    "Variance",
    "bits_per_dim",
    "discretized_gaussian_log_likelihood",
    "gather",
    "geometric_sigmas",
    "get_betas",
    "get_loss",
    "get_timestep_sampler",
    "get_weighting",
    "mean_flat",
    "normal_kl",
    "quantize",
    "refused_weighting",
    "respace",
    "space_timesteps",
]
