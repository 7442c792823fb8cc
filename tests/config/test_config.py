"""Every option of every config group composes, validates and builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

import diffuse_cli as dc
from diffuse_cli.build import build_diffusion, build_model, check_model_keys
from diffuse_cli.data.registry import DATASETS
from diffuse_cli.data.toy2d import TOY_SETS
from diffuse_cli.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GROUPS = [
    "schedule",
    "prediction",
    "variance",
    "loss",
    "sampler",
    "model",
    "data",
    "trainer",
    "logger",
    "experiment",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_registered_dataset_can_be_chosen_by_name():
    assert set(DATASETS) == set(options("data"))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"configs/{group}/ is empty"


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS if g != "sampler" for o in options(g)]
)
def test_train_option_composes_and_builds(compose, group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option in TOY_SETS:
        overrides.append("model=mlp")
    if group == "model" and option == "mlp":
        overrides.append("data=moons")
    if (group, option) == ("data", "image_folder") or group == "experiment":
        overrides.append("data.root=somewhere")  # the ImageNet presets read an image folder
    if (group, option) in (("schedule", "ncsn"), ("loss", "dsm"), ("prediction", "score")):
        overrides += ["schedule=ncsn", "loss=dsm"]  # the NCSN groups go together
    if (group, option) in (("schedule", "edm"), ("prediction", "edm")):
        overrides += ["schedule=edm", "prediction=edm", "loss.weighting=edm"]  # and the EDM ones
    if group == "model":  # a published network is built for the image size it was published at
        published_size = OmegaConf.load(CONFIGS / "model" / f"{option}.yaml").get("image_size")
        if published_size:
            overrides.append(f"data.image_size={published_size}")
    cfg = compose(overrides)
    assert cfg[group].name == option if group not in ("trainer", "experiment") else True
    check_model_keys(cfg.model)  # the preset's keys are all its architecture's
    diffusion = build_diffusion(cfg)
    if cfg.schedule.name == "edm":  # continuous sigma: no table
        assert diffusion.sampling_sigmas(18)[0] == cfg.schedule.sigma_max
    else:
        table = diffusion.sigmas if cfg.schedule.name == "ncsn" else diffusion.betas
        assert table.dtype == torch.float64 and table.shape == (cfg.schedule.num_timesteps,)
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("option", options("sampler"))
def test_sample_sampler_option_composes(compose, option):
    cfg = compose([f"sampler={option}"], command="sample")
    assert cfg.sampler.name == option
    assert cfg.steps is None


def test_every_command_composes(compose):
    for command in ("train", "sample", "eval"):
        assert compose([], command=command).run_dir == "runs/default"


def test_schedule_defaults(compose):
    cfg = compose(["schedule=linear"])
    assert (cfg.schedule.beta_start, cfg.schedule.beta_end) == (1e-4, 0.02)
    assert cfg.schedule.num_timesteps == 1000
    cfg = compose(["schedule=cosine"])
    assert (cfg.schedule.s, cfg.schedule.max_beta) == (0.008, 0.999)


def test_ddpm_model_has_published_size(compose):
    cfg = compose(["model=ddpm"])
    with torch.device("meta"):
        model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 35.7e6) / 35.7e6 < 0.005, n


def test_experiment_preset_overrides_groups(compose):
    cfg = compose(["experiment=cifar10_ddpm"])
    assert cfg.model.name == "ddpm" and cfg.variance.name == "fixed_large"
    assert cfg.trainer.lr == 2e-4 and cfg.trainer.batch_size == 128
    assert cfg.trainer.ema_decay == 0.9999 and cfg.trainer.max_steps == 800_000


def test_unknown_option_names_the_choices(compose):
    with pytest.raises(UserError, match=r"schedule/nope' \(options: cosine, edm, linear, ncsn\)$"):
        compose(["schedule=nope"])


def test_misspelt_key_fails_at_composition(compose):
    with pytest.raises(UserError, match="Key 'lrr' not in 'TrainerConfig'") as info:
        compose(["trainer.lrr=1"])
    assert isinstance(info.value.__cause__, ConfigCompositionException)


def test_wrong_type_fails_at_composition(compose):
    with pytest.raises(UserError, match="could not be converted to Integer") as info:
        compose(["trainer.max_steps=many"])
    assert isinstance(info.value.__cause__.__cause__, ValidationError)


def test_every_package_folder_is_listed_in_pyproject():
    import tomllib

    root = CONFIGS.parent
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(root).parts)
        for p in (root / "diffuse_cli").rglob("__init__.py")
    }
    assert found | {"diffuse_cli.configs"} == listed


def test_api_compose_matches_module_level_import():
    assert dc.compose_config(["schedule=cosine"]).schedule.name == "cosine"


@pytest.mark.cli
def test_plain_install_ships_the_config_tree_and_extractor_weights(tmp_path):
    """`pip install .` (not editable) must carry every YAML of configs/ inside the package."""
    import subprocess
    import sys
    import zipfile

    root = CONFIGS.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("diffuse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.endswith(".yaml")}
    expected = {
        "diffuse_cli/configs/" + str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")
    }
    assert expected and expected == shipped
    # the built-in feature extractor's weights (diffuse eval on the embedded data needs them)
    assert "diffuse_cli/evaluate/features/builtin_shapes.safetensors" in names
