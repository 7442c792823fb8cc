"""The sampler options have one source, samplers.options.OPTIONS: SamplerConfig, the files of
configs/sampler/ and the samplers' keyword arguments agree with it, and every sampler and the
commands refuse a value out of its range with the same one-line message."""

from __future__ import annotations

import inspect
import math
import typing
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffuse_cli.build import sampler_options
from diffuse_cli.config.schema import SamplerConfig
from diffuse_cli.diffusion import (
    EDMDiffusion,
    GaussianDiffusion,
    NoiseLevels,
    geometric_sigmas,
    get_betas,
)
from diffuse_cli.errors import UserError
from diffuse_cli.samplers import (
    EDM_SAMPLER_OPTIONS,
    EDM_SAMPLERS,
    SAMPLER_OPTIONS,
    SAMPLERS,
    SCORE_SAMPLERS,
    check_options,
)
from diffuse_cli.samplers.options import OPTIONS, SHARED_KEYS, Option

SAMPLER_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sampler"
# The arguments every sampler takes (samplers/registry.py), none of them a sampler option.
CALL_ARGUMENTS = ("steps", "noise", "spacing", "clip_denoised", "model_kwargs", "progress")
# Arguments a sampler takes from the command rather than from its config.
NOT_CONFIG = {"ddpm": ("cond_fn",)}  # the guidance classifier's mean shift (build.sample)
FAMILIES = [("ddpm/ncsn", SAMPLERS, SAMPLER_OPTIONS), ("edm", EDM_SAMPLERS, EDM_SAMPLER_OPTIONS)]


def test_every_sampler_has_an_options_entry_and_every_option_a_sampler():
    assert set(SAMPLER_OPTIONS) == set(SAMPLERS)
    assert set(EDM_SAMPLER_OPTIONS) == set(EDM_SAMPLERS)
    named = {
        o for table in (SAMPLER_OPTIONS, EDM_SAMPLER_OPTIONS) for n in table.values() for o in n
    }
    assert named == set(OPTIONS)
    assert not set(OPTIONS) & {"name", *SHARED_KEYS, *CALL_ARGUMENTS}


def test_sampler_config_has_the_table_s_keys_types_and_defaults():
    hints = typing.get_type_hints(SamplerConfig)
    fields = SamplerConfig.__dataclass_fields__
    assert set(fields) == {"name", *SHARED_KEYS, *OPTIONS}
    for key, option in OPTIONS.items():
        kind = option.kind | None if option.nullable else option.kind
        assert hints[key] == kind, key
        assert fields[key].default == option.default, key


@pytest.mark.parametrize("path", sorted(SAMPLER_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_each_sampler_yaml_holds_its_sampler_s_options_at_their_defaults(path):
    config = OmegaConf.to_container(OmegaConf.load(path))
    name = config["name"]
    assert name == path.stem and (name in SAMPLERS or name in EDM_SAMPLERS)
    own = {*SAMPLER_OPTIONS.get(name, ()), *EDM_SAMPLER_OPTIONS.get(name, ())}
    assert set(config) == {"name", *SHARED_KEYS, *own}
    for key in own:
        assert config[key] == OPTIONS[key].default, key


def test_every_sampler_has_a_yaml():
    assert {p.stem for p in SAMPLER_CONFIGS.glob("*.yaml")} == {*SAMPLERS, *EDM_SAMPLERS}


@pytest.mark.parametrize(
    "family,name", [(f, n) for f, samplers, _ in FAMILIES for n in samplers], ids=str
)
def test_each_sampler_s_keyword_arguments_are_its_options_with_their_defaults(family, name):
    samplers, table = next((s, t) for f, s, t in FAMILIES if f == family)
    parameters = inspect.signature(samplers[name]).parameters
    keywords = {k: p.default for k, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    own = {
        k: v for k, v in keywords.items() if k not in (*CALL_ARGUMENTS, *NOT_CONFIG.get(name, ()))
    }
    assert set(keywords) >= set(CALL_ARGUMENTS)
    assert own == {k: OPTIONS[k].default for k in table[name]}


def refused(option: Option) -> list:
    """Values of the option's kind just outside what it allows, and one of another kind."""
    if option.kind is bool:
        return ["yes", 1]
    if option.choices:
        return [max(option.choices) + 1 if option.kind is int else "nope"]
    values = [float("nan")] if option.kind is float else [1.5, True]
    if option.minimum is not None:
        values.append(option.minimum - 1)
    if option.maximum is not None:
        values.append(option.maximum + 1)
    if option.above is not None:
        values.append(option.above)
    return values if option.nullable else [*values, None]


CASES = [(key, value) for key, option in OPTIONS.items() for value in refused(option)]


@pytest.mark.parametrize("key,value", CASES, ids=str)
def test_an_option_out_of_its_range_is_refused_in_one_line_naming_key_value_and_rule(key, value):
    with pytest.raises(ValueError) as err:
        check_options(**{key: value})
    assert str(err.value) == f"{key}={value!r} {OPTIONS[key].rule()}"
    assert "\n" not in str(err.value)


def test_defaults_and_the_edges_of_each_range_are_allowed():
    check_options(**{key: option.default for key, option in OPTIONS.items()})
    for key, value in [("eta", 0.0), ("eta", 1.0), ("eta", 1), ("order", 1), ("corrector_steps", 0),
                       ("steps_per_level", 1), ("epsilon", 1e-9), ("s_tmax", math.inf),
                       ("predictor", "ddim"), ("denoise", False)]:  # fmt: skip
        check_options(**{key: value})


def test_the_rules_say_the_allowed_values_in_words():
    rules = {key: option.rule() for key, option in OPTIONS.items()}
    assert rules["eta"] == "must be in [0, 1] (0: deterministic DDIM, 1: as ancestral sampling)"
    assert rules["epsilon"] == "must be > 0 (or null: 0.4 sigma_L^2)"
    assert rules["corrector_steps"] == "must be an integer >= 0"
    assert rules["predictor"] == "must be one of: ddpm, ddim"
    assert rules["order"] == "must be one of: 1, 2"
    assert rules["snr"] == "must be > 0"
    assert rules["denoise"] == "must be true or false"
    assert rules["s_churn"] == "must be >= 0 (0: the deterministic Heun sampler)"


def call_with(name: str, edm: bool, **options):
    """Call sampler `name` (of an EDM run when `edm`) on a zero network with `options`."""
    model = lambda x, t, **kw: torch.zeros_like(x)  # noqa: E731
    x_T = torch.zeros(2, 2)
    if edm:
        return EDM_SAMPLERS[name](model, EDMDiffusion(), x_T, steps=3, **options)
    if name in SCORE_SAMPLERS:
        levels = NoiseLevels(geometric_sigmas(1.0, 0.1, 3), "eps")
        return SAMPLERS[name](model, levels, x_T, steps=3, **options)
    return SAMPLERS[name](
        model, GaussianDiffusion(get_betas("linear", 10)), x_T, steps=3, **options
    )


SAMPLER_CASES = [
    (name, family == "edm", key)
    for family, _, table in FAMILIES
    for name, keys in table.items()
    for key in keys
]


@pytest.mark.parametrize("name,edm,key", SAMPLER_CASES, ids=str)
def test_each_sampler_refuses_its_options_out_of_range_with_the_table_s_message(name, edm, key):
    for value in refused(OPTIONS[key]):
        with pytest.raises(ValueError) as err:
            call_with(name, edm, **{key: value})
        assert str(err.value) == f"{key}={value!r} {OPTIONS[key].rule()}"
    call_with(name, edm, **{key: OPTIONS[key].default})  # and runs at its default


def test_the_sample_command_refuses_an_option_out_of_range_before_sampling(compose):
    for overrides, message in [
        (["sampler=pc", "sampler.corrector_steps=-1"], "sampler.corrector_steps=-1 must be an "
         "integer >= 0"),
        (["sampler=langevin", "schedule=ncsn", "sampler.steps_per_level=0"],
         "sampler.steps_per_level=0 must be an integer >= 1"),
        (["sampler=dpm_solver", "sampler.order=3"], "sampler.order=3 must be one of: 1, 2"),
    ]:  # fmt: skip
        with pytest.raises(UserError) as err:
            sampler_options(compose(overrides, command="sample"))
        assert str(err.value) == message
