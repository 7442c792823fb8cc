"""Samplers by config name. Every sampler has the signature

    fn(model, diffusion, x_T, *, steps, noise, spacing="even", clip_denoised=True,
       model_kwargs=None, progress=False, **its own options) -> x_0

and rejects options it does not know with a TypeError.
"""

from .ddim import ddim
from .ddpm import ddpm

SAMPLERS = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str):
    """The sampler function called `name`; ValueError naming the valid choices otherwise."""
    if name not in SAMPLERS:
        raise ValueError(
            f"Unknown sampler {name!r}; valid choices are: {', '.join(sorted(SAMPLERS))}."
        )
    return SAMPLERS[name]
