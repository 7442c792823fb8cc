"""Checks made before a training run touches anything on disk."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffuse_cli.build import check_family, check_model_keys
from diffuse_cli.config import MODEL_DEFINING, SCHEMAS, defining
from diffuse_cli.errors import UserError
from diffuse_cli.posthoc_ema import MAX_STD
from diffuse_cli.ranges import (
    FRACTION,
    NOT_NEGATIVE,
    POSITIVE,
    Allowed,
    check_ranges,
    one_of,
    positive_or_null,
)
from diffuse_cli.runs import CONFIG_FILE, differences, read_run_config, with_run_config
from diffuse_cli.train.batches import MAX_MICRO_BATCHES
from diffuse_cli.train.checkpoint import latest_checkpoint, step_of
from diffuse_cli.train.ema import std_label
from diffuse_cli.train.loggers import check_logger
from diffuse_cli.train.optimizer import lr_horizon

TRAINER_CHOICES = {
    "mixed_precision": one_of("no", "fp16", "bf16"),
    "optimizer": one_of("adam", "adamw"),
    "lr_decay": one_of("constant", "linear", "cosine"),
}
POSITIVE_KEYS = ("max_steps", "batch_size", "grad_accum", "lr", "ckpt_every", "sample_every",
                 "log_every", "sample_steps", "max_bad_steps")  # fmt: skip
OFF_AT_ZERO_KEYS = ("warmup_steps", "keep_last", "weight_decay", "grad_clip")  # keep_last=0: all
TRAINER_RANGES = {
    **dict.fromkeys(POSITIVE_KEYS, POSITIVE),
    **dict.fromkeys(OFF_AT_ZERO_KEYS, NOT_NEGATIVE),
}
TRAINER_LIMITS = {  # checked once the learning-rate schedule is known to work
    "grad_accum": Allowed(lambda v: v <= MAX_MICRO_BATCHES, f"must be <= {MAX_MICRO_BATCHES}"),
    "sample_num": Allowed(lambda v: v >= 0, "must be >= 0 (0: no preview grids)"),
    "label_dropout": FRACTION,
    "ema_decay": FRACTION,
}
POSITIVE_COUNT = Allowed(lambda v: v >= 1, "must be >= 1")


def validate_train_config(cfg: DictConfig, fresh: bool = True) -> None:
    """Refuse a train config that cannot work; `fresh`: no checkpoint to resume yet (a rule
    added after a run started does not stop it from finishing)."""
    check_logger(cfg)  # a wandb login problem must stop the run before it writes anything
    tc = cfg.trainer
    check_ranges(tc, TRAINER_CHOICES, "trainer.")
    if tc.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError(
            "trainer.mixed_precision=fp16 needs a CUDA GPU (Accelerate has no fp16 loss scaler "
            "on the CPU and would train in fp32); use bf16 or no"
        )
    check_ranges(tc, TRAINER_RANGES, "trainer.")
    check_lr_decay(tc)
    check_ranges(tc, TRAINER_LIMITS, "trainer.")
    check_ranges(cfg, {"task": one_of("diffusion", "classifier")})
    check_power_ema(tc)
    check_ranges(cfg.schedule, {"num_timesteps": POSITIVE_COUNT}, "schedule.")
    check_family(cfg)  # first: a group of another family has a message of its own
    if fresh:  # a run started before the rule keeps the keys it was trained with
        check_model_keys(cfg.model)
    if cfg.task == "diffusion":  # a classifier ignores loss.*
        validate_loss_config(cfg, fresh)


def check_power_ema(tc: DictConfig) -> None:
    """trainer.ema and, for power, widths a power EMA can have and snapshots at every periodic
    checkpoint (so checkpoint=<step> names a snapshot too)."""
    check_ranges(tc, {"ema": one_of("exponential", "power")}, "trainer.")
    if tc.ema != "power":
        return
    stds = [float(s) for s in tc.ema_std]
    if not stds or any(not 0.0 < s <= MAX_STD for s in stds):
        raise UserError(
            f"trainer.ema_std={stds} must list widths in (0, {MAX_STD:.3f}] (e.g. [0.05,0.1])"
        )
    if len({std_label(s) for s in stds}) < len(stds):
        raise UserError(f"trainer.ema_std={stds} names one width twice (to three decimals)")
    every = tc.ema_snapshot_every
    if every <= 0 or tc.ckpt_every % every:
        raise UserError(
            f"trainer.ema_snapshot_every={every} must be > 0 and divide trainer.ckpt_every="
            f"{tc.ckpt_every}, so every checkpoint has its snapshot"
        )


def check_lr_decay(tc: DictConfig) -> None:
    """A decay must end after the warmup and not before the last step (the steps after it
    would train with a learning rate of 0)."""
    check_ranges(tc, {"lr_decay_steps": positive_or_null()}, "trainer.")
    if tc.lr_decay == "constant":
        return
    horizon = lr_horizon(tc)
    if tc.lr_decay_steps is not None and tc.lr_decay_steps < tc.max_steps:
        raise UserError(
            f"trainer.lr_decay_steps={tc.lr_decay_steps} is below trainer.max_steps="
            f"{tc.max_steps}: the steps after it would train with lr 0; raise it or leave it null"
        )
    if horizon <= tc.warmup_steps:
        raise UserError(
            f"trainer.lr_decay={tc.lr_decay} ends at step {horizon}, within "
            f"trainer.warmup_steps={tc.warmup_steps}; shorten the warmup"
        )


def validate_loss_config(cfg: DictConfig, fresh: bool = True) -> None:
    """The loss, its timestep sampler and the variance must fit together."""
    from diffuse_cli.diffusion import (
        LOSSES,
        TIMESTEP_SAMPLERS,
        VARIANCES,
        WEIGHTED,
        WEIGHTINGS,
        refused_weighting,
    )

    loss = cfg.loss
    if loss.name not in LOSSES:
        raise UserError(f"loss={loss.name!r} is unknown; choose one of: {', '.join(LOSSES)}")
    loss_ranges = {
        "timesteps": one_of(*TIMESTEP_SAMPLERS),
        "lam": NOT_NEGATIVE,
        "weighting": one_of(*WEIGHTINGS),
    }
    check_ranges(loss, loss_ranges, "loss.")
    if loss.weighting != "uniform" and loss.name not in WEIGHTED:
        raise UserError(refused_weighting(loss.name, loss.weighting))
    check_ranges(loss, {"snr_gamma": POSITIVE}, "loss.")
    if loss.timesteps == "importance" and loss.name in ("simple", "dsm"):
        raise UserError(
            "loss.timesteps=importance samples t by the history of the VLB term, which "
            f"loss={loss.name} does not compute; use loss=vlb or loss=hybrid"
        )
    variance = VARIANCES.get(cfg.variance.name)
    if variance is not None and variance.channel_factor > 1 and loss.name == "simple":
        raise UserError(
            f"variance={cfg.variance.name} is trained only by a VLB term, and loss=simple "
            "has none; use loss=hybrid (or loss=vlb), or a fixed variance"
        )
    fixed = variance is not None and variance.channel_factor == 1
    if fresh and fixed and loss.name == "hybrid":
        raise UserError(
            f"loss=hybrid with variance={cfg.variance.name}: the VLB term stops the mean's "
            "gradient and the variance is fixed, so it adds no gradient, only compute; use "
            "loss=simple (the same gradients, with loss.timesteps=uniform) or "
            "variance=learned_range"
        )


# What must agree between a run directory's checkpoints and a command that resumes it.
RESUME_KEYS = (*MODEL_DEFINING, "loss")


def resumed_config(cfg: DictConfig, run_dir: Path, overrides: list[str] | None) -> DictConfig:
    """`cfg` with the run's own RESUME_KEYS groups when `run_dir` holds a checkpoint of the same
    task: `diffuse train run_dir=R trainer.max_steps=N` continues R as it was trained (or
    fine-tunes an imported run) without repeating its overrides. A setting of those groups named
    in `overrides` (the command line) that differs from the run's is refused in one line
    (runs.with_run_config); where the data are read from may change. None (no command line, the
    Python API) returns `cfg` as it is, and check_resumable compares it whole."""
    if overrides is None or latest_checkpoint(run_dir) is None:
        return cfg
    if not (run_dir / CONFIG_FILE).is_file():
        return cfg
    if read_run_config(run_dir).get("task", "diffusion") != cfg.task:
        return cfg  # check_resumable refuses it, naming the task
    return with_run_config(cfg, run_dir, also=("loss",), verb="resume", overrides=overrides)


def check_resumable(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to resume a run directory that holds a different experiment."""
    saved = run_dir / CONFIG_FILE
    if latest_checkpoint(run_dir) is None or not saved.is_file():
        return
    old = read_run_config(run_dir)
    task = old.get("task", "diffusion")
    if task != cfg.task:
        raise UserError(
            f"'{run_dir}' holds a task={task} run, not task={cfg.task}; refusing to mix them: "
            f"pick another name= or run_dir=, or resume it with task={task}"
        )
    for key in RESUME_KEYS:  # where the data are read from may change (config.EXECUTION_KEYS)
        ours = defining(key, OmegaConf.to_container(cfg[key], resolve=True))
        theirs = defining(key, saved_group(old, key))
        if ours != theirs:
            raise UserError(
                f"'{run_dir}' holds a run with other {key} settings "
                f"({differences(key, ours, theirs, 'saved')}); refusing to mix them: pick "
                f"another name= or run_dir=, or resume it with {saved_overrides(key, ours, theirs)}"
            )
    check_lr_horizon(cfg, old, run_dir)
    check_ema_resumable(cfg, old, run_dir)


def check_ema_resumable(cfg: DictConfig, old: DictConfig, run_dir: Path) -> None:
    """The checkpoint holds the EMAs its run tracked: the same kind, and with ema=power the same
    widths, or the averages would restart mid-run."""
    tc, saved = cfg.trainer, old.get("trainer") or {}
    theirs = saved.get("ema", "exponential")
    ours_std = [std_label(s) for s in tc.ema_std]
    theirs_std = [std_label(s) for s in saved.get("ema_std") or []]
    if theirs != tc.ema or (tc.ema == "power" and ours_std != theirs_std):
        was = f"trainer.ema={theirs}" + (
            f" trainer.ema_std=[{','.join(theirs_std)}]" if theirs == "power" else ""
        )
        raise UserError(
            f"'{run_dir}' was trained with {was}; its checkpoints hold those EMAs only: resume "
            "it with the same settings, or pick another name= or run_dir="
        )


def check_lr_horizon(cfg: DictConfig, old: DictConfig, run_dir: Path) -> None:
    """A decaying run resumed with a horizon other than its own (a new max_steps, the horizon
    left null) would see its learning rate jump back up: say so, and how to do either on
    purpose."""
    tc, saved = cfg.trainer, old.get("trainer") or {}
    if tc.lr_decay == "constant" or tc.lr_decay_steps is not None:
        return
    if saved.get("lr_decay", "constant") != tc.lr_decay:
        return
    theirs, ours = lr_horizon(saved), tc.max_steps
    step = step_of(latest_checkpoint(run_dir))
    if theirs == ours or step >= ours:  # the same schedule, or nothing left to train
        return
    keep = (
        f"resume with trainer.lr_decay_steps={theirs} to keep it"
        if theirs >= ours
        else f"to decay anew from step {step} to step {ours}, pass trainer.lr_decay_steps="
        f"{ours}; to extend a decaying run smoothly, set trainer.lr_decay_steps past "
        "max_steps when it starts"
    )
    raise UserError(
        f"'{run_dir}' decays its learning rate ({tc.lr_decay}) to 0 at step {theirs}; this "
        f"command would end the decay at step {ours}, and the rate would jump at step {step}: "
        f"{keep}"
    )


def saved_overrides(key: str, ours: dict, theirs: dict) -> str:
    """The command-line overrides that give config group `key` its saved values: the saved
    option (`model=small`) when the option differs, else each differing key."""
    if ours.get("name") != theirs.get("name"):
        return f"{key}={theirs.get('name')}"
    return " ".join(
        f"{key}.{k}={_override_value(theirs.get(k))}"
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k) != theirs.get(k)
    )


def _override_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def saved_group(saved: DictConfig, key: str) -> dict | None:
    """A group of a saved run config as a dict, keys added to the schema since the run was
    written (e.g. schedule.sigma_max) filled in with their defaults, so they do not count as
    a difference."""
    if key not in saved:
        return None
    schema = typing.get_type_hints(SCHEMAS["train"]).get(key)
    group = saved[key]
    if dataclasses.is_dataclass(schema):
        group = OmegaConf.merge(OmegaConf.structured(schema), group)
    return OmegaConf.to_container(group, resolve=True)
