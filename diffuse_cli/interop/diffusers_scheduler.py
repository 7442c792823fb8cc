"""diffusers' DDPM and DDIM scheduler configs and this toolkit's schedule, prediction and
variance groups, in both directions: the same betas (diffusers keeps them in float32, so to a
relative 1e-6), the same meaning of the network's output."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from diffuse_cli.errors import UserError

DIFFUSERS_VERSION = "0.42.0"  # the diffusers release the written files are tested with
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# diffusers' "learned" reads the second half of the output as the variance itself; this
# toolkit's `learned` reads it as log Sigma, so only learned_range has the same meaning.
VARIANCES = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "learned_range",
}
PREDICTION_TYPES = {ours: theirs for theirs, ours in PREDICTIONS.items()}
VARIANCE_TYPES = {
    "fixed_small": "fixed_small",
    "fixed_large": "fixed_large",
    "learned_range": "learned_range",
}


def scheduler_settings(scheduler: dict, notes: list[str]) -> dict:
    """The schedule, prediction and variance groups of a DDPM/DDIM scheduler_config.json."""
    name = scheduler.get("_class_name")
    if name not in SCHEDULERS:
        raise UserError(
            f"scheduler {name} cannot be imported; this toolkit reads {' and '.join(SCHEDULERS)}"
        )
    if scheduler.get("rescale_betas_zero_snr"):
        raise UserError(
            "scheduler rescale_betas_zero_snr=true cannot be imported: no schedule "
            "here ends at zero signal-to-noise"
        )
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise UserError(
            f"scheduler prediction_type={prediction!r} cannot be imported; this "
            f"toolkit has {', '.join(PREDICTIONS)}"
        )
    variance = scheduler.get("variance_type", "fixed_small")
    if name == "DDIMScheduler":
        notes.append("DDIMScheduler records no variance: variance=fixed_small (DDIM ignores it)")
    elif variance not in VARIANCES:
        raise UserError(
            f"scheduler variance_type={variance!r} cannot be imported: diffusers' 'learned' reads "
            "the output as the variance, this toolkit's as its log; learned_range is the same in "
            "both"
        )
    if not scheduler.get("clip_sample", True):
        notes.append("the scheduler does not clip x0: sample with sampler.clip_denoised=false")
    if scheduler.get("thresholding"):
        notes.append("the scheduler thresholds x0 dynamically; samplers here clip it to [-1, 1]")
    return {
        "schedule": _schedule(scheduler),
        "prediction": {"name": PREDICTIONS[prediction]},
        "variance": {"name": VARIANCES.get(variance, "fixed_small")},
    }


def _schedule(scheduler: dict) -> dict:
    """Our schedule group for the scheduler's betas: linear (as given, float64 here where
    diffusers computes float32), squaredcos_cap_v2 = our cosine with s = 0.008 and max_beta =
    0.999, and trained_betas that are one of those to a relative 1e-6."""
    from diffuse_cli.diffusion import get_betas

    steps = scheduler.get("num_train_timesteps", 1000)
    start, end = scheduler.get("beta_start", 1e-4), scheduler.get("beta_end", 0.02)
    linear = {
        "name": "linear",
        "num_timesteps": steps,
        "beta_start": start,
        "beta_end": end,
        "scale_betas": False,
    }
    cosine = {"name": "cosine", "num_timesteps": steps, "s": 0.008, "max_beta": 0.999}
    trained = scheduler.get("trained_betas")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)
        linear.update(
            num_timesteps=len(betas), beta_start=betas[0].item(), beta_end=betas[-1].item()
        )
        cosine["num_timesteps"] = len(betas)
        for candidate in (linear, cosine):
            ours = get_betas(**_betas_arguments(candidate))
            if ((ours - betas).abs() / betas).max() <= 1e-6:
                return candidate
        raise UserError(
            "scheduler trained_betas are neither linear nor the cosine schedule (to a relative "
            "1e-6); this toolkit's schedules are linear and cosine"
        )
    kind = scheduler.get("beta_schedule", "linear")
    if kind == "linear":
        return linear
    if kind == "squaredcos_cap_v2":
        return cosine
    raise UserError(
        f"scheduler beta_schedule={kind!r} cannot be imported; this toolkit has "
        "linear and squaredcos_cap_v2 (cosine)"
    )


def _betas_arguments(schedule: dict) -> dict:
    args = {k: v for k, v in schedule.items() if k not in ("scale_betas",)}
    args["scale_to_timesteps"] = False
    return args


def scheduler_config_of(cfg: DictConfig, betas: torch.Tensor) -> dict:
    """A DDPMScheduler config with the run's betas: diffusers' own linear or squaredcos_cap_v2
    when it computes them to a relative 1e-6 (it keeps betas in float32), else trained_betas."""
    steps = len(betas)
    config = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": steps,
        "beta_start": betas[0].item(),
        "beta_end": betas[-1].item(),
        "beta_schedule": "linear",
        "trained_betas": None,
        "variance_type": VARIANCE_TYPES[cfg.variance.name],
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "prediction_type": PREDICTION_TYPES[cfg.prediction.name],
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }
    linear = torch.linspace(betas[0].item(), betas[-1].item(), steps, dtype=torch.float32)
    if _close(linear, betas):
        return config
    if cfg.schedule.name == "cosine" and _close(_diffusers_cosine(steps), betas):
        return {**config, "beta_schedule": "squaredcos_cap_v2"}
    return {**config, "trained_betas": betas.tolist()}


def _diffusers_cosine(steps: int) -> torch.Tensor:
    """squaredcos_cap_v2 as diffusers computes it: the cosine schedule with s = 0.008 and
    betas capped at 0.999 (Nichol & Dhariwal 2021, eq. 17), in float32."""
    from diffuse_cli.diffusion import get_betas

    return get_betas("cosine", steps, s=0.008, max_beta=0.999).float()


def _close(theirs: torch.Tensor, ours: torch.Tensor) -> bool:
    return bool(((theirs.double() - ours).abs() / ours).max() <= 1e-6)
