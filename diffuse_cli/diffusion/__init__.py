"""The mathematics of diffusion models: schedules, the Gaussian diffusion, respacing.

Pure torch; imports nothing else from diffuse_cli.
"""

from .gaussian import (
    PREDICTIONS,
    VARIANCES,
    GaussianDiffusion,
    Prediction,
    Variance,
    gather,
    mean_flat,
)
from .respace import SPACINGS, respace, space_timesteps
from .schedules import SCHEDULES, get_betas

__all__ = [
    "PREDICTIONS",
    "SCHEDULES",
    "SPACINGS",
    "VARIANCES",
    "GaussianDiffusion",
    "Prediction",
    "Variance",
    "gather",
    "get_betas",
    "mean_flat",
    "respace",
    "space_timesteps",
]
