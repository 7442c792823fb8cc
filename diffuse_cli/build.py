"""Objects from config: the diffusion, the network, the data, and a configured sampler call.

Everything that turns a composed config into working objects lives here, below the commands, so
the trainer, the sampler command and the evaluators share one way of building them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from diffuse_cli.errors import UserError


def is_score_model(cfg: DictConfig) -> bool:
    """Whether the config describes an NCSN (noise levels, a score network) rather than a DDPM."""
    from diffuse_cli.diffusion import NOISE_LEVEL_SCHEDULES

    return cfg.schedule.name in NOISE_LEVEL_SCHEDULES


def is_edm(cfg: DictConfig) -> bool:
    """Whether the config describes an EDM run (a preconditioned denoiser of continuous sigma)."""
    from diffuse_cli.diffusion import EDM_SCHEDULES

    return cfg.schedule.name in EDM_SCHEDULES


def build_diffusion(cfg: DictConfig):
    """What the config's network is trained against: the GaussianDiffusion of a DDPM schedule
    (schedule, prediction, variance), the NoiseLevels of schedule=ncsn (sigma_max, sigma_min,
    L = num_timesteps, prediction) or the EDMDiffusion of schedule=edm. Groups that belong to
    another family are refused."""
    from diffuse_cli.diffusion import (
        EDMDiffusion,
        GaussianDiffusion,
        NoiseLevels,
        geometric_sigmas,
        get_betas,
    )

    check_family(cfg, check_sampler=False)  # samplers: checked where used (resolve_steps)
    s = cfg.schedule
    try:
        if is_edm(cfg):
            return EDMDiffusion(s.sigma_data, s.p_mean, s.p_std, s.sigma_min, s.sigma_max, s.rho)
        if is_score_model(cfg):
            sigmas = geometric_sigmas(s.sigma_max, s.sigma_min, s.num_timesteps)
            return NoiseLevels(sigmas, prediction=cfg.prediction.name)
        betas = get_betas(
            s.name,
            s.num_timesteps,
            beta_start=s.beta_start,
            beta_end=s.beta_end,
            scale_to_timesteps=s.scale_betas,
            s=s.s,
            max_beta=s.max_beta,
        )
        return GaussianDiffusion(betas, prediction=cfg.prediction.name, variance=cfg.variance.name)
    except ValueError as err:
        raise UserError(str(err)) from err


def check_family(cfg: DictConfig, check_sampler: bool = True) -> None:
    """A DDPM (schedule linear/cosine), an NCSN (schedule=ncsn) and an EDM run (schedule=edm)
    share the network, the data and the trainer, but not their losses, predictions or samplers:
    refuse a mix in one line. Checks the groups `cfg` has (loss for train/eval, sampler for
    sample; not the sampler with check_sampler=False)."""
    from diffuse_cli.diffusion import (
        EDM_SCHEDULES,
        NOISE_LEVEL_SCHEDULES,
        SCHEDULES,
        SCORE_PREDICTIONS,
    )
    from diffuse_cli.samplers import SAMPLERS, SCORE_SAMPLERS

    name = cfg.schedule.name
    known = (*SCHEDULES, *NOISE_LEVEL_SCHEDULES, *EDM_SCHEDULES)
    if name not in known:
        raise UserError(f"schedule={name!r} is unknown; choose one of: {', '.join(sorted(known))}")
    prediction, loss = cfg.prediction.name, cfg.get("loss")
    sampler = cfg.get("sampler") if check_sampler else None  # eval's loss metrics draw none
    if is_edm(cfg):
        check_edm(cfg, loss, sampler)
        return
    if prediction == "edm":
        raise UserError(
            f"prediction=edm is the preconditioned network of schedule=edm; schedule={name} "
            f"takes prediction={'eps, x0 or v' if name in SCHEDULES else 'score, eps or x0'}"
        )
    if sampler is not None and sampler.name == "heun" and sampler.get("s_churn", 0) != 0:
        raise UserError(
            f"sampler.s_churn={sampler.s_churn} is the stochastic Heun sampler of schedule=edm; "
            f"schedule={name} has deterministic heun only: leave sampler.s_churn=0"
        )
    if is_score_model(cfg):
        if prediction not in SCORE_PREDICTIONS:
            raise UserError(
                f"prediction={prediction} has no meaning for schedule=ncsn; choose one of: "
                f"{', '.join(sorted(SCORE_PREDICTIONS))}"
            )
        if cfg.variance.name in ("learned", "learned_range"):
            raise UserError(
                f"variance={cfg.variance.name} is the variance of a DDPM reverse step, which "
                "schedule=ncsn does not have; leave variance=fixed_small"
            )
        if loss is not None and loss.name != "dsm":
            raise UserError(
                f"loss={loss.name} is a DDPM loss; schedule=ncsn trains with loss=dsm "
                "(or use experiment=ncsn_shapes)"
            )
        guidance = cfg.get("guidance")
        if guidance is not None and guidance.name == "classifier":
            raise UserError(
                "guidance=classifier shifts a DDPM sampler's mean or eps; an NCSN run "
                "(schedule=ncsn) can use guidance=cfg"
            )
        if sampler is not None and sampler.name in SAMPLERS and sampler.name not in SCORE_SAMPLERS:
            raise UserError(
                f"sampler={sampler.name} samples a DDPM, but this run is an NCSN "
                f"(schedule=ncsn); use sampler={' or sampler='.join(SCORE_SAMPLERS)}"
            )
        return
    if prediction == "score":
        raise UserError(
            f"prediction=score (the raw score) is for schedule=ncsn; schedule={name} takes "
            "prediction=eps, x0 or v"
        )
    if loss is not None and loss.name == "dsm":
        raise UserError(
            f"loss=dsm trains an NCSN and needs schedule=ncsn; schedule={name} trains with "
            "loss=simple, vlb or hybrid"
        )
    if sampler is not None and sampler.name in SCORE_SAMPLERS:
        raise UserError(
            f"sampler={sampler.name} (annealed Langevin dynamics) samples an NCSN run "
            f"(schedule=ncsn), but this run has schedule={name}; for Langevin steps on a DDPM "
            "use sampler=pc"
        )


def check_edm(cfg: DictConfig, loss, sampler) -> None:
    """Refuse, in one line naming the alternative, what schedule=edm has no meaning for."""
    from diffuse_cli.samplers import EDM_SAMPLERS

    if cfg.prediction.name != "edm":
        fix = "prediction=edm"  # and the weighting a diffusion run needs too, in the same line
        if loss is not None and cfg.get("task", "diffusion") == "diffusion":
            fix += "" if loss.get("weighting") == "edm" else " loss.weighting=edm"
        raise UserError(
            f"prediction={cfg.prediction.name}: schedule=edm trains the preconditioned network F "
            f"of D = c_skip x + c_out F; set {fix} (or use experiment=edm_shapes)"
        )
    if cfg.variance.name != "fixed_small":
        raise UserError(
            f"variance={cfg.variance.name} is the variance of a DDPM reverse step, which "
            "schedule=edm does not have; leave variance=fixed_small"
        )
    if loss is not None and loss.name != "simple":
        raise UserError(
            f"loss={loss.name} has no meaning for schedule=edm, which trains EDM's weighted "
            "denoiser loss: use loss=simple"
        )
    denoiser = cfg.get("task", "diffusion") == "diffusion"  # a classifier ignores loss.*
    if loss is not None and denoiser and loss.get("weighting", "edm") != "edm":
        raise UserError(
            f"loss.weighting={loss.weighting}: schedule=edm weights its loss by EDM's "
            "lambda(sigma) with its own sigma_data; set loss.weighting=edm"
        )
    if loss is not None and loss.timesteps != "uniform":
        raise UserError(
            f"loss.timesteps={loss.timesteps} draws integer timesteps; schedule=edm draws ln "
            "sigma ~ N(p_mean, p_std^2): leave loss.timesteps=uniform"
        )
    if "model" in cfg and cfg.model.rescale_timesteps:
        raise UserError(
            "model.rescale_timesteps=true scales integer timesteps, but schedule=edm gives the "
            "network c_noise = ln(sigma) / 4; set model.rescale_timesteps=false"
        )
    if sampler is not None and sampler.name not in EDM_SAMPLERS:
        raise UserError(
            f"sampler={sampler.name} has no form for schedule=edm (no ancestral posterior, no "
            f"Langevin levels); use sampler={' or sampler='.join(EDM_SAMPLERS)}"
        )


def build_loss(cfg: DictConfig):
    """The training loss of `cfg.loss`: loss(diffusion, model, x0, t) -> {"loss": [B], ...}."""
    from diffuse_cli.diffusion import EDMLoss, get_loss

    check_family(cfg, check_sampler=False)
    if is_edm(cfg):
        return EDMLoss()
    try:
        loss = cfg.loss
        return get_loss(loss.name, loss.lam, weighting=loss.weighting, snr_gamma=loss.snr_gamma)
    except ValueError as err:
        raise UserError(str(err)) from err


TOY_SHAPE = {"channels": 2, "image_size": 0}  # the data settings of the 2-D toy sets


def data_shape(cfg: DictConfig) -> tuple[int, ...]:
    """Per-sample shape of the configured data: (C, H, W) for images, (D,) for vectors. A 2-D
    toy set with other settings is refused (its points would not fit the network)."""
    from diffuse_cli.data import TOY_SETS

    d = cfg.data
    if d.name in TOY_SETS:  # a network sized by another shape would fail at its first batch
        wrong = [f"data.{key}={d[key]}" for key, needed in TOY_SHAPE.items() if d[key] != needed]
        if wrong:
            raise UserError(
                f"data={d.name} is 2-D points, but {' and '.join(wrong)}; set "
                f"data.channels=2 and data.image_size=0 (the defaults of data={d.name})"
            )
    return (d.channels,) if d.image_size == 0 else (d.channels, d.image_size, d.image_size)


def output_channels(cfg: DictConfig) -> int:
    """Channels the network emits: doubled when the variance is learned ([mean, var] on dim 1)."""
    from diffuse_cli.diffusion import VARIANCES

    if cfg.variance.name not in VARIANCES:
        raise UserError(
            f"variance={cfg.variance.name!r} is unknown; choose one of: "
            f"{', '.join(sorted(VARIANCES))}"
        )
    return cfg.data.channels * VARIANCES[cfg.variance.name].channel_factor


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """The network of `cfg.model`, allocated on the current default device (meta works)."""
    from diffuse_cli.models import MLP

    m, shape = cfg.model, data_shape(cfg)
    if m.arch == "mlp":
        if len(shape) != 1:
            raise UserError(
                f"model={m.name} is for vector data, but data={cfg.data.name} is "
                "images; use a UNet model such as model=small"
            )
        try:
            return MLP(
                dim=shape[0],
                hidden=m.hidden,
                num_layers=m.num_layers,
                out_dim=output_channels(cfg),
                num_classes=m.num_classes,
                timestep_scale=timestep_scale(cfg),
                dropout=m.dropout,
            )
        except ValueError as err:
            raise UserError(f"model={m.name}: {err}") from err
    if m.arch == "unet":
        if len(shape) != 3:
            raise UserError(
                f"model={m.name} is a UNet for images, but data={cfg.data.name} is "
                "2-D; use model=mlp"
            )
        return build_unet(m, shape[0], output_channels(cfg), shape[1], timestep_scale(cfg))
    raise UserError(f"model.arch={m.arch!r} is unknown; choose one of: unet, mlp")


def check_model_keys(m: DictConfig) -> None:
    """Refuse, in one line, a key that only another architecture than model.arch reads, set
    away from its default (config.schema.ARCH_KEYS): the network would be built without it."""
    from diffuse_cli.config.schema import ARCH_KEYS, ModelConfig

    if m.arch not in ARCH_KEYS:
        return  # build_model names the architectures
    own = {f.name for f in dataclasses.fields(ARCH_KEYS[m.arch])}
    for f in dataclasses.fields(ModelConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if f.name in own or f.name not in m or m[f.name] == default:
            continue
        reader = next(a for a, keys in ARCH_KEYS.items() if f.name in keys.__dataclass_fields__)
        value = OmegaConf.to_container(m[f.name]) if OmegaConf.is_config(m[f.name]) else m[f.name]
        raise UserError(
            f"model.{f.name}={json.dumps(value)} is a setting of model.arch={reader} networks; "
            f"model={m.name} is arch={m.arch} and would not read it: leave model.{f.name} at "
            f"its default, {json.dumps(default)}"
        )


def timestep_scale(cfg: DictConfig) -> float:
    """What the network multiplies t by: 1000 / T with model.rescale_timesteps, else 1 (always
    for schedule=edm, whose c_noise is given as it is)."""
    if is_edm(cfg):
        return 1.0
    return 1000 / cfg.schedule.num_timesteps if cfg.model.rescale_timesteps else 1.0


def unet_options(m: DictConfig, image_size: int, time_scale: float = 1.0) -> dict:
    """The UNet settings of model config `m` that the denoiser and the classifier (its encoder
    half) share: everything but the channels in and out and the labels. A published preset
    (`m.image_size` set) is refused at another size."""
    if m.image_size is not None and m.image_size != image_size:
        raise UserError(
            f"model={m.name} is the published network for {m.image_size}x{m.image_size} "
            f"images, but data.image_size={image_size}; set data.image_size={m.image_size}, "
            "or model.image_size=null to use its settings at another size"
        )
    return dict(
        model_channels=m.model_channels,
        channel_mult=tuple(m.channel_mult),
        num_res_blocks=m.num_res_blocks,
        attention_resolutions=tuple(m.attention_resolutions),
        dropout=m.dropout,
        num_heads=m.num_heads,
        num_head_channels=m.num_head_channels,
        image_size=image_size,
        resblock_updown=m.resblock_updown,
        use_scale_shift_norm=m.use_scale_shift_norm,
        residual_rescale=m.residual_rescale,
        use_checkpoint=m.use_checkpoint,
        channels_last=m.channels_last,
        timestep_scale=time_scale,
        time_channels=m.get("time_channels"),  # runs from before the key: model_channels
        norm_groups=m.norm_groups,
        norm_eps=m.norm_eps,
        freq_shift=m.freq_shift,
        downsample_padding=m.downsample_padding,
    )


def build_unet(
    m: DictConfig, in_channels: int, out_channels: int, image_size: int, time_scale: float = 1.0
):
    """The UNet of model config `m` for images of `image_size` pixels, multiplying t by
    `time_scale` (see timestep_scale; meta device works)."""
    from diffuse_cli.models import UNet

    try:
        return UNet(
            in_channels=in_channels,
            out_channels=out_channels,
            num_classes=m.num_classes,
            **unet_options(m, image_size, time_scale),
        )
    except ValueError as err:
        raise UserError(f"model={m.name}: {err}") from err


def sample(
    cfg: DictConfig,
    model: Callable,
    diffusion,
    noise: torch.Tensor,
    generator=None,
    model_kwargs: dict | None = None,
    progress: bool = False,
    cond_fn: Callable | None = None,
):
    """Run `cfg.sampler` for `cfg.steps` steps (T when unset) from the noise x_T (on the
    model's device).

    `model` is any callable model(x_t, t, **model_kwargs) with integer original timesteps; an
    nn.Module runs in eval mode (no dropout) and is handed back in its own mode.
    `generator` is a torch.Generator, a PerSampleNoise (per-sample seeds) or None (the global
    RNG). `cond_fn` is ancestral classifier guidance (samplers.ddpm); see build_guidance.
    """
    from diffuse_cli.diffusion import EDMDiffusion, NoiseLevels
    from diffuse_cli.models.modes import evaluating
    from diffuse_cli.samplers import as_noise_source, get_sampler

    if "sampler" not in cfg:
        raise UserError("sample needs a sample config: dc.compose_config([...], command='sample')")
    score, edm = isinstance(diffusion, NoiseLevels), isinstance(diffusion, EDMDiffusion)
    if (score, edm) != (is_score_model(cfg), is_edm(cfg)):  # the family is the diffusion's: a
        family = "ncsn" if score else "edm" if edm else "linear"  # sample config composed apart
        patch = {"schedule": {"name": family}}  # from its run has the default schedule
        if edm:
            patch["prediction"] = {"name": "edm"}
        cfg = OmegaConf.merge(cfg, patch)
    steps = resolve_steps(cfg, diffusion)
    s = cfg.sampler
    options = sampler_options(cfg)
    try:
        sampler = get_sampler(s.name, diffusion)
    except ValueError as err:
        raise UserError(str(err)) from err
    with evaluating(model, cond_fn):  # the guidance classifier too
        return sampler(
            model,
            diffusion,
            noise,
            steps=steps,
            noise=as_noise_source(generator, noise.shape[0]),
            spacing=s.spacing,
            clip_denoised=s.clip_denoised,
            model_kwargs=model_kwargs,
            progress=progress,
            **({"cond_fn": cond_fn} if cond_fn is not None else {}),
            **options,
        )


def build_classifier(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    """The classifier f_phi(y | x_t, t) of a task=classifier run: the encoder half of the UNet
    that `cfg.model` describes with an attention-pooling head (images), or the MLP (vectors)."""
    from diffuse_cli.models import MLP, EncoderClassifier

    m, shape = cfg.model, data_shape(cfg)
    if m.arch == "mlp" and len(shape) == 1:  # raw t, as MLP classifiers always took it: their
        try:  # checkpoints were trained so, whatever model.rescale_timesteps says
            return MLP(
                dim=shape[0],
                hidden=m.hidden,
                num_layers=m.num_layers,
                out_dim=num_classes,
                dropout=m.dropout,
            )
        except ValueError as err:
            raise UserError(f"model={m.name}: {err}") from err
    if m.arch != "unet" or len(shape) != 3:
        build_model(cfg)  # raises the same clear error a diffusion model would
    try:
        options = unet_options(m, shape[1], timestep_scale(cfg))
        return EncoderClassifier(num_classes, in_channels=shape[0], **options)
    except ValueError as err:
        raise UserError(f"model={m.name}: {err}") from err


def build_guidance(cfg: DictConfig, model, diffusion, classifier=None):
    """(the model callable to sample with, cond_fn for samplers.ddpm or None) for
    `cfg.guidance`. The callable takes labels y (dropped for unconditional networks); with
    classifier guidance, ddpm gets the mean shift as cond_fn and every other sampler the eps
    shift inside the model call (Dhariwal & Nichol 2021, Algorithms 1 and 2)."""
    from diffuse_cli.guidance import (
        ClassifierFree,
        ClassifierGradient,
        DenoiserShift,
        EpsShift,
        WithLabels,
    )

    if "guidance" not in cfg:
        raise UserError(
            "build_guidance needs a sample or eval config: dc.compose_config([...], "
            "command='sample')"
        )
    g = cfg.guidance
    if g.name == "none":
        return WithLabels(model), None
    if g.name == "cfg":
        try:
            return ClassifierFree(model, g.scale), None
        except ValueError as err:  # an unconditional network
            raise UserError(f"guidance=cfg: {err}") from err
    if g.name == "classifier":
        if classifier is None:
            raise UserError("guidance=classifier needs the classifier (dc.load_classifier)")
        gradient = ClassifierGradient(classifier, g.scale)
        if is_edm(cfg):
            return DenoiserShift(WithLabels(model), diffusion, gradient), None
        if cfg.sampler.name == "ddpm":
            return WithLabels(model), gradient
        return EpsShift(WithLabels(model), diffusion, gradient), None
    raise UserError(f"guidance={g.name!r} is unknown; choose one of: none, classifier, cfg")


def sampler_options(cfg: DictConfig) -> dict:
    """The options of cfg.sampler that its sampler takes (samplers.option_names: of the EDM
    sampler for schedule=edm), checked."""
    from diffuse_cli.samplers import check_options, option_names

    s = cfg.sampler
    options = {key: s[key] for key in option_names(s.name, is_edm(cfg))}
    try:
        check_options(**options)
    except ValueError as err:
        raise UserError(f"sampler.{err}") from err
    return options


def resolve_steps(cfg: DictConfig, diffusion) -> int:
    """The step count to sample with: `steps` when set, otherwise the full chain T (for an NCSN,
    the L noise levels, all of which annealed Langevin visits). Also checks that the sampler
    fits the run and its options."""
    check_family(cfg)
    if cfg.get("steps") is not None and cfg.steps <= 0:
        raise UserError(f"steps={cfg.steps} must be a positive number of sampling steps")
    if is_edm(cfg):
        return edm_steps(cfg)
    T = diffusion.num_timesteps
    steps = cfg.get("steps") or T
    if is_score_model(cfg) and steps != T:
        raise UserError(
            f"steps={steps}: sampler={cfg.sampler.name} visits all L={T} noise levels of this "
            "NCSN run; drop steps= and set sampler.steps_per_level instead"
        )
    if steps > T:
        raise UserError(
            f"steps={steps} is more than the {T} timesteps the model was trained "
            f"with; use steps<={T}"
        )
    sampler_options(cfg)
    if not is_score_model(cfg):  # the NCSN sampler visits every level: no spacing
        from diffuse_cli.samplers.grids import SPACINGS

        if cfg.sampler.spacing not in SPACINGS:
            raise UserError(
                f"sampler.spacing={cfg.sampler.spacing!r} is not one of: {', '.join(SPACINGS)}"
            )
    return steps


def edm_steps(cfg: DictConfig) -> int:
    """schedule=edm: `steps` sigma grid points (null: 18, EDM's CIFAR-10 setting) on a sigma
    spacing; the sampler's options checked."""
    from diffuse_cli.diffusion import DEFAULT_SAMPLING_STEPS, SIGMA_GRIDS

    spacing = cfg.sampler.spacing
    if spacing not in SIGMA_GRIDS:
        raise UserError(
            f"sampler.spacing={spacing} spaces a DDPM's integer timesteps; schedule=edm samples "
            f"on a sigma grid: set sampler.spacing=karras (EDM eq. 5) or sampler.spacing=logsnr"
        )
    sampler_options(cfg)
    return cfg.get("steps") or DEFAULT_SAMPLING_STEPS


def build_data(cfg: DictConfig, split: str, every_process: bool = False):
    """The dataset of `cfg.data` for split 'train' or 'test'. `every_process`: every process
    of a launch builds it at this point, so a download is made once, by the main process,
    before the others read the files (a process building it alone must not wait for them)."""
    from diffuse_cli.data import build_dataset
    from diffuse_cli.distributed import main_process_first

    d = cfg.data
    data_shape(cfg)  # refuses data settings that the data set cannot give
    together = every_process and d.download
    try:
        with main_process_first() if together else contextlib.nullcontext():
            return build_dataset(
                d.name,
                split,
                root=d.root,
                image_size=d.image_size,
                channels=d.channels,
                num_train=d.num_train,
                num_test=d.num_test,
                seed=d.seed,
                subset=d.get("subset", "evenly_spaced"),
                download=d.download,
            )
    except ValueError as err:
        raise UserError(str(err)) from err
