"""The UNet's and the MLP's model keys are checked apart (config.schema.ARCH_KEYS): a key that
only the other architecture reads is refused in one line when a run starts
(tests/config/test_config.py checks every shipped model and experiment config with it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffuse_cli.build import build_classifier, build_model
from diffuse_cli.config.schema import ARCH_KEYS, ModelConfig, NetworkKeys
from diffuse_cli.errors import UserError
from diffuse_cli.train.validate import validate_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def keys(schema) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


def test_every_model_key_belongs_to_an_architecture_and_the_shared_ones_to_all():
    assert set().union(*(keys(s) for s in ARCH_KEYS.values())) == keys(ModelConfig)
    assert set.intersection(*(keys(s) for s in ARCH_KEYS.values())) == keys(NetworkKeys)
    assert keys(ARCH_KEYS["mlp"]) - keys(NetworkKeys) == {"hidden", "num_layers"}


@pytest.mark.parametrize("path", sorted((CONFIGS / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_model_config_sets_only_its_architecture_s_keys(path):
    model = OmegaConf.to_container(OmegaConf.load(path))
    assert set(model) <= keys(ARCH_KEYS[model.get("arch", "unet")])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model=mlp", "data=moons", "model.model_channels=32"],
         "model.model_channels=32 is a setting of model.arch=unet networks; model=mlp is "
         "arch=mlp and would not read it: leave model.model_channels at its default, 128"),
        (["model=mlp", "data=moons", "model.channel_mult=[1,2]"],
         "model.channel_mult=[1, 2] is a setting of model.arch=unet networks"),
        (["model.hidden=64"],
         "model.hidden=64 is a setting of model.arch=mlp networks; model=small is arch=unet and "
         "would not read it: leave model.hidden at its default, 256"),
    ],
)  # fmt: skip
def test_a_key_of_the_other_architecture_is_refused_in_one_line(compose, overrides, message):
    with pytest.raises(UserError) as err:
        validate_train_config(compose(overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    validate_train_config(compose(overrides), fresh=False)  # a started run finishes as it was


def test_the_shared_keys_and_an_architecture_s_own_keys_pass(compose):
    validate_train_config(compose(["model=mlp", "data=moons", "model.hidden=32",
                                   "model.dropout=0.1", "model.num_classes=2",
                                   "model.rescale_timesteps=true"]))  # fmt: skip
    validate_train_config(compose(["model.model_channels=32", "model.dropout=0.1"]))


@pytest.mark.parametrize("arch,overrides", [("mlp", ["model=mlp", "data=moons"]), ("unet", [])])
def test_the_networks_are_built_from_their_architecture_s_keys_alone(compose, arch, overrides):
    """With every key of the other architecture removed from the config, the network and the
    classifier still build: the builders read no key outside ARCH_KEYS[arch]."""
    cfg = OmegaConf.create(OmegaConf.to_container(compose(overrides)))  # without the schema
    cfg.model = {k: v for k, v in cfg.model.items() if k in keys(ARCH_KEYS[arch])}
    with torch.device("meta"):
        build_model(cfg)
        build_classifier(cfg, num_classes=3)
