"""The public Python API; the CLI calls exactly these functions.

import diffuse_cli as dc
cfg = dc.compose_config(["schedule=cosine", "sampler=ddim", "steps=50"], command="sample")
diffusion = dc.build_diffusion(cfg)
model = dc.build_model(cfg)
x0 = dc.sample(cfg, model, diffusion, noise=x_T, generator=g)
bpd = dc.nll_bpd(model, diffusion, x0_test, generator=g)["total"]
run_cfg, model, diffusion = dc.load_run("runs/default")   # the run's config, EMA weights
run_cfg, model, diffusion = dc.load_run("runs/power", ema_std=0.08)  # post-hoc EMA
*_, weights = dc.open_run("runs/default")                 # and which: weights.step, .sha256
clf_cfg, classifier = dc.load_classifier("runs/classifier")
cfg = dc.compose_config(["guidance=classifier", "guidance.scale=3"], command="sample")
guided, cond_fn = dc.build_guidance(cfg, model, diffusion, classifier)  # cfg.guidance
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffuse_cli.build import build_diffusion, build_guidance, build_model, sample
from diffuse_cli.errors import UserError
from diffuse_cli.evaluate.nll import nll_bpd

__all__ = [
    "build_diffusion",
    "build_guidance",
    "build_model",
    "compose_config",
    "load_classifier",
    "load_run",
    "nll_bpd",
    "open_classifier",
    "open_run",
    "sample",
]


def compose_config(
    overrides: Sequence[str] = (), command: str = "train", *, check_keys: bool = True
) -> DictConfig:
    """Compose the config of `command` exactly as `diffuse <command> *overrides` would: a bad
    override, or a key the command does not read (`+key=value`), is a one-line UserError.
    `check_keys=False` keeps such keys (to inspect a config as Hydra makes it). A Hydra set
    up by the caller is left as it was."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from diffuse_cli.config import SCHEMAS, check_known_keys, register_configs

    if command not in SCHEMAS:
        raise UserError(f"unknown command '{command}'; choose one of: {', '.join(SCHEMAS)}")
    if isinstance(overrides, str):  # one override, not its characters
        overrides = [overrides]
    register_configs()
    callers = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("diffuse_cli.configs", version_base="1.3"):
            cfg = compose(config_name=command, overrides=list(overrides))
    except HydraException as err:
        raise UserError(_one_line(err)) from err
    finally:
        restore_gh_from_backup(callers)
    if check_keys:
        check_known_keys(cfg, command)
    return cfg


def _one_line(err: Exception) -> str:
    """Hydra's message and its cause's first line, in one line: 'Could not find
    'schedule/cosinee' (options: cosine, linear, ncsn)', 'Error merging override
    trainer.max_steps=abc: Value 'abc' ... could not be converted to Integer'."""
    text = str(err).split("Config search path:")[0]
    head, _, options = text.partition("Available options in")
    head = " ".join(ln.strip() for ln in head.splitlines()
                    if ln.strip() and not ln.startswith("To append"))  # fmt: skip
    if options:
        head += " (options: " + ", ".join(o.strip() for o in options.splitlines()[1:] if o.strip())
        head += ")"
    cause = str(err.__cause__ or "").strip()
    return head.rstrip(".") + f": {cause.splitlines()[0]}" if cause else head


def load_run(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    ema: bool = True,
    config: DictConfig | None = None,
    step: int | None = None,
    ema_std: float | None = None,
):
    """(cfg, model, diffusion) of the checkpoint of `step` in `run_dir` (None: the latest),
    EMA weights by default. `config`: a command's config, whose execution keys
    (config.EXECUTION_KEYS, e.g. model.channels_last) replace the run's; everything else is the
    run's own. `ema_std`: a trainer.ema=power run's EMA of that relative width, reconstructed
    from its snapshots (`step`: the snapshot's; None: the latest)."""
    return open_run(run_dir, device, ema, config, step, ema_std)[:3]


def open_run(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    ema: bool = True,
    config: DictConfig | None = None,
    step: int | None = None,
    ema_std: float | None = None,
):
    """load_run's (cfg, model, diffusion) and the LoadedWeights (checkpoint or snapshot folder,
    step, sha256) the model holds, which reports record."""
    from diffuse_cli.config import EXECUTION_KEYS
    from diffuse_cli.runs import read_run_config
    from diffuse_cli.train.checkpoint import load_weights
    from diffuse_cli.train.ema_snapshots import check_ema_std, load_reconstructed

    if ema_std is not None and not ema:
        raise UserError("ema_std reconstructs an EMA; it cannot go with the raw weights")
    cfg = read_run_config(run_dir)
    if cfg.get("task", "diffusion") != "diffusion":
        raise UserError(
            f"'{run_dir}' holds a task={cfg.task} run, not a diffusion model; sample from a "
            f"diffusion run, with guidance=classifier guidance.classifier={run_dir} "
            "(dc.load_classifier in Python)"
        )
    if config is not None:
        execution = {
            group: {k: config[group][k] for k in keys if k in config[group]}
            for group, keys in EXECUTION_KEYS.items()
            if group in config
        }
        cfg = OmegaConf.merge(cfg, execution)
    if ema_std is not None:
        check_ema_std(cfg, run_dir, ema_std)
    model = build_model(cfg)
    if ema_std is None:
        weights = load_weights(model, run_dir, ema=ema, step=step)
    else:
        weights = load_reconstructed(model, run_dir, ema_std, step)
    return cfg, model.to(device).eval(), build_diffusion(cfg), weights


def load_classifier(
    run_dir: str | Path, device: str | torch.device = "cpu", ema: bool = False, step=None
):
    """(cfg, classifier) of the checkpoint of `step` (None: the latest) of a task=classifier
    run. The raw weights by default: ADM's guidance classifiers are used without EMA."""
    return open_classifier(run_dir, device, ema, step)[:2]


def open_classifier(
    run_dir: str | Path, device: str | torch.device = "cpu", ema: bool = False, step=None
):
    """load_classifier's (cfg, classifier) and the LoadedWeights it holds."""
    from diffuse_cli.build import build_classifier
    from diffuse_cli.runs import read_run_config
    from diffuse_cli.train.checkpoint import load_weights

    cfg = read_run_config(run_dir, task="classifier")
    if cfg.get("task", "diffusion") != "classifier":
        raise UserError(
            f"'{run_dir}' is not a classifier run (task={cfg.get('task', 'diffusion')}); "
            "train one with `diffuse train task=classifier`"
        )
    model = build_classifier(cfg, cfg.classifier.num_classes)
    weights = load_weights(model, run_dir, ema=ema, step=step)
    return cfg, model.to(device).eval(), weights


def open_classifier_everywhere(run_dir, device="cpu"):
    """open_classifier at the step the main process finds, for commands that every process
    runs: a classifier run may still be training and save a newer step meanwhile. A folder
    that holds no classifier run is named as such first."""
    from diffuse_cli.runs import read_run_config
    from diffuse_cli.train.checkpoint import agreed_step

    read_run_config(run_dir, task="classifier")
    return open_classifier(run_dir, device, step=agreed_step(run_dir))


def _train(cfg: DictConfig) -> None:
    from diffuse_cli.train.trainer import train

    train(cfg)


def _sample(cfg: DictConfig) -> None:
    from diffuse_cli.generate import sample_command

    sample_command(cfg)


def _eval(cfg: DictConfig) -> None:
    from diffuse_cli.evaluate.command import eval_command

    eval_command(cfg)


def _import(cfg: DictConfig) -> None:
    from diffuse_cli.import_command import import_command

    import_command(cfg)


COMMANDS: dict[str, Callable[[DictConfig], None]] = {
    "train": _train,
    "sample": _sample,
    "eval": _eval,
    "import": _import,
}
