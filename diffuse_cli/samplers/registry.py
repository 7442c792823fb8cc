"""Samplers by config name. Every sampler has the signature

    fn(model, diffusion, x_T, *, steps, noise, spacing="even", clip_denoised=True,
       model_kwargs=None, progress=False, **its own options) -> x_0

and rejects options it does not know with a TypeError. SAMPLER_OPTIONS names each sampler's own
options (keys of the sampler config), so a config can pass exactly those.

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
from .pc import PREDICTORS, pc

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
EDM_SAMPLER_OPTIONS = {
    "heun": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "euler": (),
    "ddim": ("eta",),
    "dpm_solver": ("order",),
}

SAMPLER_OPTIONS = {
    "ddpm": (),
    "ddim": ("eta",),
    "euler": (),
    "heun": (),
    "dpm_solver": ("order",),
    "pc": ("predictor", "corrector_steps", "snr"),
    "langevin": ("steps_per_level", "epsilon", "denoise"),
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
        return steps + options.get("corrector_steps", 1) * (steps - 1)
    if name == "langevin":
        return steps * options.get("steps_per_level", 100) + int(options.get("denoise", True))
    return steps


def check_options(**options) -> None:
    """ValueError "key=value must ..." for a sampler option out of its range (only the options
    given are checked), so a command can refuse a config before sampling."""
    rules = {
        "eta": (  # above 1, sigma^2 exceeds 1 - abar' and the x_t marginals are lost
            lambda v: 0 <= v <= 1,
            "must be in [0, 1] (0: deterministic DDIM, 1: as ancestral sampling)",
        ),
        "order": (lambda v: v in (1, 2), "must be 1 or 2"),
        "predictor": (lambda v: v in PREDICTORS, f"must be one of: {', '.join(PREDICTORS)}"),
        "corrector_steps": (lambda v: v >= 0, "must be >= 0"),
        "snr": (lambda v: v > 0, "must be > 0"),
        "steps_per_level": (lambda v: v >= 1, "must be >= 1"),
        "epsilon": (lambda v: v is None or v > 0, "must be > 0 (or null: 0.4 sigma_L^2)"),
        "denoise": (lambda v: isinstance(v, bool), "must be true or false"),
        "s_churn": (lambda v: v >= 0, "must be >= 0 (0: the deterministic Heun sampler)"),
        "s_tmin": (lambda v: v >= 0, "must be >= 0"),
        "s_tmax": (lambda v: v >= 0, "must be >= 0"),
        "s_noise": (lambda v: v >= 0, "must be >= 0"),
    }
    for key, value in options.items():
        ok, message = rules[key]
        if not ok(value):
            raise ValueError(f"{key}={value!r} {message}")
