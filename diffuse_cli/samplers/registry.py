"""Samplers by config name. Every sampler has the signature

    fn(model, diffusion, x_T, *, steps, noise, spacing="even", clip_denoised=True,
       model_kwargs=None, progress=False, **its own options) -> x_0

and rejects options it does not know with a TypeError. Each sampler's own options (keys of the
sampler config) are named, with their ranges, in samplers.options, so a config can pass exactly
those.

The samplers of a DDPM take a GaussianDiffusion; `langevin` (NCSN) takes the NoiseLevels of a
score model instead, and SCORE_SAMPLERS names the samplers of that family. An EDM run
(schedule=edm) samples with EDM_SAMPLERS (samplers.edm), the same names on its sigma grid;
get_sampler picks them for an EDMDiffusion.
"""

from ..diffusion import EDMDiffusion
from . import edm
from .ddim import ddim
from .ddpm import ddpm
from .dpm_solver import dpm_solver
from .langevin import langevin
from .ode import euler, heun
from .options import OPTIONS
from .pc import pc

SAMPLERS = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpm_solver": dpm_solver,
    "pc": pc,
    "langevin": langevin,
}
SCORE_SAMPLERS = ("langevin",)
EDM_SAMPLERS = {
    "heun": edm.heun,
    "euler": edm.euler,
    "ddim": edm.ddim,
    "dpm_solver": edm.dpm_solver,
}


def get_sampler(name: str, diffusion=None):
    """The sampler function called `name` (of EDM_SAMPLERS when `diffusion` is an
    EDMDiffusion); ValueError naming the valid choices otherwise."""
    if isinstance(diffusion, EDMDiffusion):
        if name not in EDM_SAMPLERS:
            raise ValueError(
                f"sampler={name} has no EDM form; schedule=edm samples with: "
                f"{', '.join(sorted(EDM_SAMPLERS))}."
            )
        return EDM_SAMPLERS[name]
    if name not in SAMPLERS:
        raise ValueError(
            f"Unknown sampler {name!r}; valid choices are: {', '.join(sorted(SAMPLERS))}."
        )
    return SAMPLERS[name]


def evaluations(name: str, steps: int, **options) -> int:
    """The number of network evaluations per sample that sampler `name` makes with `steps`
    steps and its `options` (samplers.NFECounter measures the same); the EDM samplers of the
    same name count alike (heun: 2 N - 1, EDM's count)."""
    get_sampler(name)
    if name == "heun":
        return 2 * steps - 1
    if name == "pc":
        return steps + given_or_default(options, "corrector_steps") * (steps - 1)
    if name == "langevin":
        per_level = given_or_default(options, "steps_per_level")
        return steps * per_level + int(given_or_default(options, "denoise"))
    return steps


def given_or_default(options: dict, key: str):
    """options[key], or the option's default (options.OPTIONS) when not given."""
    return options.get(key, OPTIONS[key].default)
