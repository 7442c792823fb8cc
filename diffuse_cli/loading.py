"""Loading a run's model, or a classifier run's classifier, from its checkpoint folder.

Below every command (sample, eval, the guidance and feature classifiers) and the public API,
which re-exports these functions: the commands import them from here, never through the API.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffuse_cli.build import build_diffusion, build_model
from diffuse_cli.errors import UserError


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
