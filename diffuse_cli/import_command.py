"""The `import` command: a foreign checkpoint becomes a run directory.

`diffuse import source=PATH name=NAME [overrides]` reads the file (or folder) with the reader of
its format (interop/), merges what it records with the command's config, refusing a setting given
on the command line that the weights contradict, and writes runs/NAME as training would: the
resolved train config and a checkpoint at step 0 holding the weights as raw and EMA weights, so
`sample`, `eval` and `train` (fine-tuning) take it like any run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from diffuse_cli.build import build_model
from diffuse_cli.config import MODEL_DEFINING
from diffuse_cli.config.schema import IMPORT_ONLY_KEYS, TrainConfig
from diffuse_cli.errors import UserError
from diffuse_cli.files import write_atomically
from diffuse_cli.interop.imported import ImportedNetwork
from diffuse_cli.runs import CONFIG_FILE, hydra_output_dir, hydra_overrides, overridden_keys

# Groups a preset (`experiment=...`) sets as a whole.
PRESET_GROUPS = (*MODEL_DEFINING, "loss")


def import_command(cfg: DictConfig) -> Path:
    """Import cfg.source into the run directory; returns it."""
    if OmegaConf.is_missing(cfg, "source"):
        raise UserError(
            "diffuse import needs source=PATH: an openai .pt file or a diffusers folder"
        )
    if cfg.task != "diffusion":
        raise UserError(f"task={cfg.task}: diffuse import makes diffusion runs; drop task=")
    run_dir = hydra_output_dir() or Path(cfg.run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(
            f"'{run_dir}' is not empty; import into a new run: pass another name= or run_dir="
        )
    source = Path(cfg.source)
    imported = read_source(source, cfg)
    given = GivenSettings(hydra_overrides())
    run_cfg = merged_config(cfg, imported, given, source)
    from diffuse_cli.train.validate import validate_train_config

    validate_train_config(run_cfg)
    model = build_model(run_cfg)
    fit_weights(model, imported.state_dict, source)
    write_run(run_cfg, model, run_dir, source)
    for note in imported.notes:
        print(f"{source.name}: {note}")
    print(f"imported '{source}' into {run_dir}; sample with `diffuse sample run_dir={run_dir}`")
    return run_dir


def read_source(source: Path, cfg: DictConfig) -> ImportedNetwork:
    """The reader of the source's format: a folder is diffusers', a file openai's."""
    from diffuse_cli.interop.openai import read_openai

    if source.is_dir():
        return read_folder(source, cfg)
    if not source.is_file():
        raise UserError(f"source={source}: no such file or folder")
    return read_openai(source, cfg)


def read_folder(source: Path, cfg: DictConfig) -> ImportedNetwork:
    """A diffusers folder: a pipeline (model_index.json, unet/, scheduler/) or a bare
    UNet2DModel."""
    from diffuse_cli.interop.diffusers import read_diffusers

    return read_diffusers(source, cfg)


class GivenSettings:
    """Which settings the command line gives: a key (`model.num_heads=4`), its group
    (`model=adm_imagenet64`) or a preset setting whole groups (`experiment=...`)."""

    def __init__(self, overrides: list[str]):
        self.keys = overridden_keys(overrides)

    def group(self, group: str) -> bool:
        return group in self.keys or (group in PRESET_GROUPS and "experiment" in self.keys)

    def __call__(self, key: str, cfg: DictConfig) -> bool:
        """Whether `key` ("model.num_heads") is given; a group's value counts when not null
        (model.image_size is null for a model that is not a published preset)."""
        group = key.split(".")[0]
        if key in self.keys:
            return True
        return self.group(group) and OmegaConf.select(cfg, key) is not None


def merged_config(
    cfg: DictConfig, imported: ImportedNetwork, given: GivenSettings, source: Path
) -> DictConfig:
    """The new run's train config: the command's, with what the source records; a given
    setting the source contradicts is refused, naming the key and both values."""
    for alternatives in imported.needs_given:
        if not any(given(key, cfg) for key in alternatives):
            keys = " or ".join(f"{k}=..." for k in alternatives)
            raise UserError(
                f"'{source}' does not record {' or '.join(alternatives)}: pass {keys} "
                "(README's import section lists them for the published checkpoints)"
            )
    for group, values in imported.config.items():
        for key, value in values.items():
            ours = OmegaConf.select(cfg, f"{group}.{key}")
            if isinstance(ours, ListConfig):
                ours = OmegaConf.to_container(ours)
            if given(f"{group}.{key}", cfg) and ours != value:
                raise UserError(
                    f"{group}.{key}: '{source}' has {value!r}, the command gives {ours!r}; "
                    f"drop the setting (or fix it) to import the network the file holds"
                )
    extra: dict = {}
    if not given.group("model"):
        extra["model"] = {"name": imported.source}
    if not given.group("loss"):
        learned = imported.config.get("variance", {}).get("name", cfg.variance.name)
        extra["loss"] = {"name": "hybrid" if learned.startswith("learned") else "simple"}
    merged = OmegaConf.to_container(OmegaConf.merge(cfg, imported.config, extra), resolve=True)
    for key in IMPORT_ONLY_KEYS:  # the run's config is a train config
        merged.pop(key)
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), merged)


def fit_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load `state` into `model`, or say in one line which tensors do not fit."""
    check_fit(model.state_dict(), state, source)
    model.load_state_dict(state)


def check_fit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: Path) -> None:
    """A one-line UserError unless `state` has exactly the keys and shapes of `own`."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        listed = (("missing", missing), ("not expected", unexpected))
        parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in listed if keys]  # fmt: skip
        raise UserError(
            f"'{source}' is not a network this toolkit can express as read ({'; '.join(parts)})"
        )
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise UserError(
                f"'{source}': {key} has shape {tuple(tensor.shape)}, the network its other "
                f"tensors describe needs {tuple(own[key].shape)}"
            )


def write_run(cfg: DictConfig, model: torch.nn.Module, run_dir: Path, source: Path) -> None:
    """config.yaml and a step-0 checkpoint, written by the training code's own functions."""
    from diffuse_cli.diffusion.timesteps import get_timestep_sampler
    from diffuse_cli.train.checkpoint import save_checkpoint
    from diffuse_cli.train.optimizer import build_optimizer

    weights = model.state_dict()
    optimizer = build_optimizer(model.parameters(), cfg.trainer, torch.device("cpu"))
    timesteps = get_timestep_sampler(cfg.loss.timesteps, cfg.schedule.num_timesteps)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"world_size": 1, "skipped_steps": 0, "bad_in_a_row": 0, "imported": str(source)}
    save_checkpoint(
        run_dir,
        0,
        weights,
        weights,
        optimizer.state_dict(),
        state,
        keep_last=cfg.trainer.keep_last,
        timestep_state=timesteps.state_dict(),
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["run_dir"] = str(run_dir)
    write_atomically(run_dir / CONFIG_FILE, OmegaConf.to_yaml(resolved))
    write_atomically(run_dir / "overrides.yaml", OmegaConf.to_yaml(hydra_overrides()))
