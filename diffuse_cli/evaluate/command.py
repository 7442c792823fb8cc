"""`diffuse eval`: the metrics named in `metrics`, on a run's latest checkpoint (EMA weights
unless eval.ema=false).

    loss    held-out training loss per timestep bucket    eval/loss.json, loss_by_timestep.png
            (an NCSN run: the DSM loss per noise level)
    nll     bits/dim by the full T-step variational bound  eval/nll.json, nll_terms.png
            (DDPM runs only)
    fid kid is pr    sample quality of images (quality.py)  eval/<sampler>-<steps>/<extractor>.json
    swd energy       sample quality of 2-D points           eval/<sampler>-<steps>/points.json

The sample-quality metrics share one set of samples. Under `accelerate launch` each process
takes a shard of the work where a metric supports it (nll, sampling and features), and the main
process writes the reports.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffuse_cli.build import build_diffusion, is_edm, is_score_model, resolve_steps
from diffuse_cli.errors import UserError
from diffuse_cli.evaluate.loss_report import loss_metric
from diffuse_cli.evaluate.nll import check_nll_settings, nll_metric
from diffuse_cli.evaluate.quality import (
    QUALITY,
    check_quality,
    check_sample_count,
    default_num_samples,
    quality_metric,
)
from diffuse_cli.evaluate.reference import check_reference_settings
from diffuse_cli.ranges import POSITIVE, check_ranges
from diffuse_cli.runs import read_run_config, with_run_config
from diffuse_cli.train.ema_snapshots import check_ema_std, snapshot_step

METRICS = {"loss": loss_metric, "nll": nll_metric}
# the sample-quality names an error offers (QUALITY also takes fd and kd)
QUALITY_METRIC_NAMES = ("fid", "kid", "is", "pr", "swd", "energy")
EVAL_RANGES = dict.fromkeys(("num_batches", "batch_size", "buckets", "repeats"), POSITIVE)


def check_eval_config(cfg: DictConfig) -> list[str]:
    """The metrics to run, in order and without repeats; UserError for bad settings."""
    metrics = list(dict.fromkeys(cfg.metrics))
    unknown = [m for m in metrics if m not in METRICS and m not in QUALITY]
    if unknown or not metrics:
        named = ", ".join(unknown) if unknown else "none given"
        offered = ", ".join([*METRICS, *QUALITY_METRIC_NAMES])
        raise UserError(
            f"metrics={list(cfg.metrics)}: unknown metric ({named}); choose from: "
            f"{offered} (e.g. metrics=[loss,nll] or metrics=[fid,kid])"
        )
    check_ranges(cfg.eval, EVAL_RANGES, "eval.")
    quality = [m for m in metrics if m in QUALITY]
    if quality:  # everything quality_metric would refuse, before anything else runs
        wanted = check_quality(cfg, quality)
        if not cfg.eval.samples:  # the count of a samples file is known once it is read
            num = cfg.eval.num_samples or default_num_samples(cfg)
            check_sample_count(cfg, wanted, num, "eval.num_samples")
        if cfg.data.image_size > 0:
            check_reference_settings(cfg)
    if "nll" in metrics and is_score_model(cfg):
        raise UserError(
            "metrics=[nll] is the variational bound of a DDPM, which an NCSN run "
            "(schedule=ncsn) does not have; use metrics=[loss] (held-out DSM loss per noise level)"
        )
    if "nll" in metrics and is_edm(cfg):
        raise UserError(
            "metrics=[nll] is the discrete variational bound of a DDPM, which an EDM run "
            "(schedule=edm) does not have; use metrics=[loss] (held-out EDM loss by sigma)"
        )
    if "nll" in metrics:
        check_nll_settings(cfg)
    if cfg.ema_std is not None:
        if not cfg.eval.ema:
            raise UserError("ema_std reconstructs an EMA; drop eval.ema=false or ema_std")
        if cfg.eval.samples and all(m in QUALITY for m in metrics):
            raise UserError("ema_std has no effect on eval.samples (samples drawn before); drop it")
        check_ema_std(read_run_config(cfg.run_dir), cfg.run_dir, cfg.ema_std)
    return metrics


def eval_command(cfg: DictConfig) -> list[Path]:
    from diffuse_cli.distributed import process_state
    from diffuse_cli.generate import pick_device
    from diffuse_cli.loading import open_run
    from diffuse_cli.train.checkpoint import agreed_step

    run_dir = Path(cfg.run_dir)
    cfg = with_run_config(cfg, run_dir, also=("loss",))  # the loss the run trained with
    metrics = check_eval_config(cfg)
    if any(m in QUALITY for m in metrics) and not cfg.eval.samples:
        resolve_steps(cfg, build_diffusion(cfg))  # bad sampler settings: before loading
    state = process_state()
    device = state.device if state.num_processes > 1 else pick_device(cfg.device)
    loaded = {}

    def load_model():
        """(model, diffusion, LoadedWeights), loaded once and only when needed."""
        if not loaded:
            find = snapshot_step if cfg.ema_std is not None else None  # post-hoc EMA
            step = agreed_step(run_dir, cfg.checkpoint, find)  # a run still training saves more
            _, model, diffusion, weights = open_run(
                run_dir, device, cfg.eval.ema, config=cfg, step=step, ema_std=cfg.ema_std
            )
            loaded.update(model=model, diffusion=diffusion, weights=weights)
        return loaded["model"], loaded["diffusion"], loaded["weights"]

    paths = []
    quality = [m for m in metrics if m in QUALITY]
    for m in metrics:
        if m in METRICS:
            model, diffusion, weights = load_model()
            header = {
                "run_dir": str(run_dir),
                "checkpoint": weights.folder.name,
                "weights_sha256": weights.sha256,
                "weights": "ema" if cfg.eval.ema else "model",
                "ema_std": cfg.ema_std,  # null: the checkpoint's own EMA
                "split": "test",
                "config": {
                    k: OmegaConf.to_container(cfg[k])
                    for k in ("schedule", "prediction", "variance", "loss")
                },
            }
            paths.append(METRICS[m](cfg, model, diffusion, device, header, state))
        elif m == quality[0]:
            paths.append(quality_metric(cfg, quality, load_model, device, state))
    state.wait_for_everyone()  # the CLI leaves the process group after the last job
    return [p for p in paths if p is not None]
