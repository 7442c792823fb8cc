"""diffuse: train, sample and evaluate diffusion models from one Hydra config."""

from diffuse_cli.api import (
    build_diffusion,
    build_model,
    compose_config,
    load_classifier,
    load_run,
    nll_bpd,
    sample,
)

__all__ = [
    "build_diffusion",
    "build_model",
    "compose_config",
    "load_classifier",
    "load_run",
    "nll_bpd",
    "sample",
]
__version__ = "0.1.0"
