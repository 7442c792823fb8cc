"""Write a run as a diffusers pipeline folder (`diffuse export format=diffusers`): model_index.json,
unet/ (UNet2DModel config.json and safetensors weights) and scheduler/ (a DDPMScheduler with the
run's betas, prediction and variance), which `DDPMPipeline.from_pretrained` loads.

Whether a run can be written is decided from its architecture: what UNet2DModel cannot compute
is refused in one line before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig

from diffuse_cli.errors import UserError

from .diffusers_layout import Layout, to_diffusers
from .diffusers_scheduler import DIFFUSERS_VERSION, VARIANCE_TYPES, scheduler_config_of


def export_diffusers(
    run_dir: str | Path, out_dir: str | Path, ema: bool = True, step: int | None = None
) -> Path:
    """Write the run's checkpoint (EMA weights unless `ema=False`; `step` None: the latest) to
    `out_dir` as a DDPMPipeline folder, through a temporary folder renamed into place."""
    from diffuse_cli.build import build_diffusion, build_model
    from diffuse_cli.runs import read_run_config
    from diffuse_cli.train.checkpoint import load_weights

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"out={out} exists and is not an empty folder; choose a new one")
    cfg = read_run_config(run_dir)
    if cfg.get("task", "diffusion") != "diffusion":
        raise UserError(f"'{run_dir}' holds a task={cfg.task} run; export a diffusion run")
    check_exportable(cfg)
    model = build_model(cfg)
    unet_config, layout = unet_config_of(cfg, model)  # refuses what UNet2DModel cannot be
    load_weights(model, run_dir, ema=ema, step=step)
    scheduler_config = scheduler_config_of(cfg, build_diffusion(cfg).betas)
    weights = to_diffusers(model.state_dict(), layout)
    _write_folder(out, unet_config, scheduler_config, weights)
    return out


def check_exportable(cfg: DictConfig) -> None:
    """Refuse, in one line naming the reason, a run UNet2DModel and DDPMScheduler cannot
    reproduce exactly."""
    from diffuse_cli.build import is_edm, is_score_model

    m = cfg.model
    reasons = [
        (is_score_model(cfg), "it is an NCSN score model; diffusers' DDPM pipelines need a DDPM"),
        (is_edm(cfg), "it is an EDM run (schedule=edm); diffusers' DDPM pipelines need a DDPM"),
        (m.arch != "unet", f"model.arch={m.arch} is not a UNet; UNet2DModel is one"),
        (
            m.get("residual_rescale", False),
            "model.residual_rescale divides residual sums by sqrt(2), which UNet2DModel's down "
            "and up blocks do not",
        ),
        (
            m.get("rescale_timesteps", False) and cfg.schedule.num_timesteps != 1000,
            f"model.rescale_timesteps feeds the network t x 1000/{cfg.schedule.num_timesteps}; "
            "UNet2DModel embeds t as given",
        ),
        (
            m.get("time_channels") not in (None, m.model_channels),
            f"model.time_channels={m.get('time_channels')} sinusoidal features; UNet2DModel has "
            "as many as its first level's channels",
        ),
        (
            m.arch == "unet" and m.channel_mult[0] != 1,
            f"model.channel_mult starts at {m.channel_mult[0]}; UNet2DModel's first level has "
            "the input convolution's channels (channel_mult[0] = 1)",
        ),
        (
            cfg.variance.name not in VARIANCE_TYPES,
            f"variance={cfg.variance.name} (log Sigma) has no diffusers variance_type: its "
            "'learned' reads the output as Sigma itself",
        ),
    ]
    for refused, reason in reasons:
        if refused:
            raise UserError(f"this run cannot be exported to diffusers: {reason}")


def unet_config_of(cfg: DictConfig, model: torch.nn.Module) -> tuple[dict, Layout]:
    """UNet2DModel's config.json for the run's UNet, and the layout of its weights."""
    m = cfg.model
    levels = len(m.channel_mult)
    attention = [model.resolutions[level] in m.attention_resolutions for level in range(levels)]
    groups, eps = _one_norm(model)
    base = m.model_channels
    biggan = m.get("resblock_updown", False)  # residual blocks resample: diffusers' "resnet"
    resample = "resnet" if biggan else "conv"
    plain_down = "ResnetDownsampleBlock2D" if biggan else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if biggan else "UpBlock2D"
    config = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": cfg.data.image_size,
        "in_channels": model.in_channels,
        "out_channels": model.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": None,
        "freq_shift": _plain_number(m.get("freq_shift", 0.0)),
        "flip_sin_to_cos": True,
        "down_block_types": [("AttnDownBlock2D" if a else plain_down) for a in attention],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": [("AttnUpBlock2D" if a else plain_up) for a in reversed(attention)],
        "block_out_channels": [base * k for k in m.channel_mult],
        "layers_per_block": m.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": m.get("downsample_padding", 1),
        "downsample_type": resample,
        "upsample_type": resample,
        "dropout": m.dropout,
        "act_fn": "silu",
        "attention_head_dim": _head_dim(model),
        "norm_num_groups": groups,
        "attn_norm_num_groups": groups,  # else AdaGN's middle attention would lose its norm
        "norm_eps": eps,
        "resnet_time_scale_shift": "scale_shift" if m.use_scale_shift_norm else "default",
        "add_attention": True,
        "class_embed_type": None,
        # the null label is class num_classes: guidance=cfg's unconditional branch
        "num_class_embeds": None if m.num_classes is None else m.num_classes + 1,
        "num_train_timesteps": None,
    }
    attention_levels = frozenset(i for i, a in enumerate(attention) if a)
    conditional = m.num_classes is not None
    layout = Layout(levels, m.num_res_blocks, attention_levels, conditional, biggan)
    return config, layout


def _plain_number(x: float) -> int | float:
    """1 for 1.0: diffusers declares freq_shift an int."""
    return int(x) if float(x).is_integer() else x


def _one_norm(model: torch.nn.Module) -> tuple[int, float]:
    """The GroupNorms' (groups, eps), which UNet2DModel has one of for the whole network."""
    found = {(n.num_groups, n.eps) for n in model.modules() if isinstance(n, torch.nn.GroupNorm)}
    if len(found) != 1:
        groups = sorted({g for g, _ in found})
        raise UserError(
            f"this run cannot be exported to diffusers: its GroupNorms have {groups} groups "
            "(model.norm_groups=null picks them by width) and UNet2DModel has one "
            "norm_num_groups; train with model.norm_groups set (e.g. 8 or 32)"
        )
    return next(iter(found))


def _head_dim(model: torch.nn.Module) -> int | None:
    """attention_head_dim: None for one head per attention layer, else the one head size."""
    from diffuse_cli.models.unet import AttentionBlock

    blocks = [b for b in model.modules() if isinstance(b, AttentionBlock)]
    if all(b.num_heads == 1 for b in blocks):
        return None
    sizes = sorted({b.qkv.in_channels // b.num_heads for b in blocks})
    if len(sizes) > 1:
        raise UserError(
            f"this run cannot be exported to diffusers: its attention heads have {sizes} "
            "channels and UNet2DModel has one attention_head_dim; use model.num_head_channels"
        )
    return sizes[0]


def _write_folder(out: Path, unet: dict, scheduler: dict, weights: dict) -> None:
    """model_index.json, unet/ and scheduler/ written into a temporary sibling, renamed to
    `out` once whole (an empty `out` is replaced)."""
    from safetensors.torch import save_file

    from diffuse_cli.files import give_plain_file_mode, temporary_sibling

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out, "")
    try:
        (tmp / "unet").mkdir(parents=True)
        (tmp / "scheduler").mkdir()
        index = {
            "_class_name": "DDPMPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        }
        for path, config in (
            (tmp / "model_index.json", index),
            (tmp / "unet" / "config.json", unet),
            (tmp / "scheduler" / "scheduler_config.json", scheduler),
        ):
            path.write_text(json.dumps(config, indent=2) + "\n")
        safetensors = tmp / "unet" / "diffusion_pytorch_model.safetensors"
        save_file({k: v.detach().cpu() for k, v in weights.items()}, safetensors)
        give_plain_file_mode(safetensors)
        if out.is_dir():
            out.rmdir()  # empty, checked before; a file there now makes rename fail
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
