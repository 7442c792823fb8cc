"""Every sampler option in one table: its type, default, allowed values and meaning.

The samplers' own options (beyond the arguments every sampler takes) are defined here once.
The registry's option lists, the range check a command runs before sampling and the checks each
sampler makes when called come from this table; config/schema.py's SamplerConfig, the files of
configs/sampler/ and the samplers' keyword arguments are checked against it by the tests. To add
an option: a row in OPTIONS, its name in the sampler's SAMPLER_OPTIONS (or EDM_SAMPLER_OPTIONS)
entry, then the same name and default in the sampler's signature, SamplerConfig and the YAML file.
"""

from dataclasses import dataclass

# What every sampler config holds besides its name and its own options.
SHARED_KEYS = ("spacing", "clip_denoised")


@dataclass(frozen=True)
class Option:
    """One sampler option. Allowed: a value of `kind` (None too when `nullable`) within
    [minimum, maximum], above `above` (exclusive) and among `choices`, where given; `note` is
    said after the rule when a value is refused."""

    kind: type  # int | float | bool | str
    default: object
    help: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    choices: tuple = ()
    nullable: bool = False
    note: str = ""

    def allows(self, value) -> bool:
        if value is None:
            return self.nullable
        if not is_of_kind(value, self.kind):
            return False
        if self.choices:
            return value in self.choices
        if self.kind in (bool, str):
            return True
        # every comparison with NaN is false: NaN fails any bound
        low_ok = self.minimum is None or value >= self.minimum
        high_ok = self.maximum is None or value <= self.maximum
        above_ok = self.above is None or value > self.above
        return low_ok and high_ok and above_ok

    def rule(self) -> str:
        """'must be ...': the allowed values in words."""
        if self.kind is bool:
            text = "true or false"
        elif self.choices:
            text = f"one of: {', '.join(str(c) for c in self.choices)}"
        elif self.kind is str:
            text = "a string"
        elif self.minimum is not None and self.maximum is not None:
            text = f"in [{self.minimum:g}, {self.maximum:g}]"
        elif self.minimum is not None:
            text = f">= {self.minimum:g}"
        elif self.above is not None:
            text = f"> {self.above:g}"
        else:
            text = "a number"
        if self.kind is int and not self.choices:
            text = "an integer" if text == "a number" else f"an integer {text}"
        return f"must be {text}" + (f" ({self.note})" if self.note else "")


def is_of_kind(value, kind: type) -> bool:
    """Whether `value` is a `kind`; an int is a float too, a bool is neither."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


OPTIONS = {
    "eta": Option(  # above 1, sigma^2 exceeds 1 - abar' and the x_t marginals are lost
        float,
        0.0,
        "ddim: the noise scale of Song et al. 2021, eq. 16",
        minimum=0,
        maximum=1,
        note="0: deterministic DDIM, 1: as ancestral sampling",
    ),
    "order": Option(int, 2, "dpm_solver: 1 (= DDIM) or 2 (2M)", choices=(1, 2)),
    "predictor": Option(
        str, "ddpm", "pc: the predictor step, ddpm (ancestral) or ddim", choices=("ddpm", "ddim")
    ),
    "corrector_steps": Option(int, 1, "pc: Langevin steps after each predictor step", minimum=0),
    "snr": Option(float, 0.16, "pc: the corrector's target signal-to-noise ratio", above=0),
    "steps_per_level": Option(
        int, 100, "langevin: T, Langevin steps at each noise level", minimum=1
    ),
    "epsilon": Option(
        float,
        None,
        "langevin: alpha_L, the step size at the last level",
        above=0,
        nullable=True,
        note="or null: 0.4 sigma_L^2",
    ),
    "denoise": Option(bool, True, "langevin: end with x + sigma_L^2 s(x, sigma_L)"),
    "s_churn": Option(
        float,
        0.0,
        "heun, schedule=edm: EDM Algorithm 2's noise",
        minimum=0,
        note="0: the deterministic Heun sampler",
    ),
    "s_tmin": Option(
        float, 0.0, "heun, schedule=edm: add noise only at sigma >= s_tmin", minimum=0
    ),
    "s_tmax": Option(
        float, float("inf"), "heun, schedule=edm: add noise only at sigma <= s_tmax", minimum=0
    ),
    "s_noise": Option(float, 1.0, "heun, schedule=edm: the added noise's std factor", minimum=0),
}

# Each sampler's own options, by config name: of a DDPM or NCSN run, and of an EDM run.
SAMPLER_OPTIONS = {
    "ddpm": (),
    "ddim": ("eta",),
    "euler": (),
    "heun": (),
    "dpm_solver": ("order",),
    "pc": ("predictor", "corrector_steps", "snr"),
    "langevin": ("steps_per_level", "epsilon", "denoise"),
}
EDM_SAMPLER_OPTIONS = {
    "heun": ("s_churn", "s_tmin", "s_tmax", "s_noise"),
    "euler": (),
    "ddim": ("eta",),
    "dpm_solver": ("order",),
}


def option_names(sampler: str, edm: bool = False) -> tuple[str, ...]:
    """The options sampler `sampler` takes (of the EDM sampler of that name when `edm`); () for
    a name no sampler has."""
    return (EDM_SAMPLER_OPTIONS if edm else SAMPLER_OPTIONS).get(sampler, ())


def check_options(**options) -> None:
    """ValueError "key=value must ..." for the first option out of its range (only the options
    given are checked), so a command can refuse a config before sampling and a sampler its
    arguments before the first step."""
    for key, value in options.items():
        option = OPTIONS[key]
        if not option.allows(value):
            raise ValueError(f"{key}={value!r} {option.rule()}")
