"""Read a diffusers folder into this toolkit's terms: a pipeline folder (model_index.json, unet/,
scheduler/) or a bare UNet2DModel folder (config.json and its weights).

Everything comes from the folder's JSON configs and weight files; diffusers itself is not
needed. A convention the UNet can compute exactly becomes a model key (`norm_groups`,
`norm_eps`, `freq_shift`, `downsample_padding`; diffusers' [sin, cos] embedding order is a
permutation of the first time-embedding layer's inputs); anything else is refused in one line.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from diffuse_cli.errors import UserError

from .diffusers_layout import Layout, from_diffusers, to_diffusers, with_current_attention_names
from .diffusers_scheduler import scheduler_settings
from .imported import ImportedNetwork

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# UNet2DModel settings this toolkit's UNet has no counterpart for, and the values it can take.
FIXED = {
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1, 1.0),
    "downsample_type": ("conv", "resnet"),
    "upsample_type": ("conv", "resnet"),
    "act_fn": ("silu",),
    "add_attention": (True,),
    "class_embed_type": (None,),
    "resnet_time_scale_shift": ("default", "scale_shift"),
}
# A key missing from config.json takes UNet2DModel's default, as diffusers does when it loads it.
DEFAULT_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
DEFAULT_UP_BLOCKS = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
# block type -> (with attention, resamples with a residual block: None = as the *_type key says)
DOWN_BLOCKS = {
    "DownBlock2D": (False, False),
    "AttnDownBlock2D": (True, None),
    "ResnetDownsampleBlock2D": (False, True),
}
UP_BLOCKS = {
    "UpBlock2D": (False, False),
    "AttnUpBlock2D": (True, None),
    "ResnetUpsampleBlock2D": (False, True),
}


def read_diffusers(path: Path, cfg: DictConfig) -> ImportedNetwork:
    """The network of diffusers folder `path`: model and data settings from the UNet's
    config.json, schedule, prediction and variance from scheduler/ (a bare UNet takes them from
    `cfg`, the command's config, and says that the schedule and prediction must be given there),
    weights under our keys. Refuses in one line what the UNet
    cannot compute exactly."""
    path = Path(path)
    unet_dir, scheduler_file = _locate(path)
    unet = _read_json(unet_dir / "config.json")
    if unet.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(
            f"'{unet_dir}' holds a {unet['_class_name']}; only diffusers' UNet2DModel (pixel-space "
            "DDPM/DDIM pipelines) can be imported"
        )
    notes: list[str] = []
    needs_given: list[tuple[str, ...]] = []
    with _malformed(unet_dir / "config.json"):
        model, data, layout = unet_settings(unet, notes)
    config = {"model": model, "data": data}
    if scheduler_file is not None:
        with _malformed(scheduler_file):
            config.update(scheduler_settings(_read_json(scheduler_file), notes))
    else:
        notes.append(
            "a bare UNet records no schedule: the schedule, prediction and variance "
            "are the command's"
        )
        needs_given = [("schedule", "schedule.num_timesteps"), ("prediction",)]
    if "variance" in config:
        _check_variance(unet, config["variance"]["name"], "the scheduler's", unet_dir)
    else:
        _check_variance(unet, cfg.variance.name, "the command's", unet_dir)
    theirs = with_current_attention_names(_read_weights(unet_dir))
    _check_tensors(theirs, layout, OmegaConf.merge(cfg, config), unet_dir)
    state = from_diffusers(theirs, layout)
    if not unet.get("flip_sin_to_cos", True):  # [sin, cos] inputs: reorder the first layer's
        state["time_embed.0.weight"] = _sin_cos_to_cos_sin(state["time_embed.0.weight"])
    if layout.conditional:
        notes.append(
            f"{model['num_classes']} classes; the null label (row {model['num_classes']}) "
            "is zero: classifier-free guidance needs a model trained with label dropout"
        )
    return ImportedNetwork("diffusers", config, state, notes, needs_given)


def _locate(path: Path) -> tuple[Path, Path | None]:
    """(the UNet's folder, the scheduler's config or None) of a pipeline or bare UNet folder."""
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json")
        extra = sorted(k for k in index if not k.startswith("_") and k not in ("unet", "scheduler"))
        unet = index.get("unet")
        if extra or not isinstance(unet, list) or unet[-1:] != ["UNet2DModel"]:
            raise UserError(
                f"'{path}' is a {index.get('_class_name', 'pipeline')} with "
                f"{', '.join(extra) or unet}; only pixel-space pipelines of a "
                "UNet2DModel and a scheduler (DDPMPipeline, DDIMPipeline) can be imported"
            )
        scheduler = path / "scheduler" / "scheduler_config.json"
        return path / "unet", scheduler if scheduler.is_file() else None
    if (path / "config.json").is_file():
        return path, None
    raise UserError(
        f"'{path}' is not a diffusers folder: it has neither model_index.json (a pipeline) nor "
        "config.json (a UNet2DModel)"
    )


@contextlib.contextmanager
def _malformed(path: Path):
    """A config value of the wrong kind (a string for a list, an empty list) as one line."""
    try:
        yield
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
        raise UserError(f"'{path}' has a value this reader cannot use ({err!r})") from err


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            found = json.load(f)
    except FileNotFoundError as err:
        raise UserError(f"'{path}' is missing; a diffusers folder needs it") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"'{path}' is not a readable JSON config ({err})") from err
    if not isinstance(found, dict):
        raise UserError(f"'{path}' is not a JSON object, as diffusers' configs are")
    return found


def unet_settings(unet: dict, notes: list[str]) -> tuple[dict, dict, Layout]:
    """(model settings, data settings, layout) of a UNet2DModel config.json."""
    for key, allowed in FIXED.items():
        value = unet.get(key, allowed[0])
        if value not in allowed:
            raise UserError(
                f"UNet2DModel {key}={value!r} cannot be imported: this toolkit's UNet computes "
                f"only {' or '.join(repr(a) for a in allowed)}"
            )
    channels = list(unet.get("block_out_channels", (224, 448, 672, 896)))
    down = unet.get("down_block_types", DEFAULT_DOWN_BLOCKS)
    up = unet.get("up_block_types", DEFAULT_UP_BLOCKS)
    for kind, blocks, names in (("down", down, DOWN_BLOCKS), ("up", up, UP_BLOCKS)):
        unknown = sorted(set(blocks) - set(names))
        if unknown:
            raise UserError(
                f"UNet2DModel {kind}_block_types {unknown} cannot be imported; this toolkit's UNet "
                f"has {' and '.join(names)}"
            )
    if not channels or len(channels) != len(down):
        raise UserError(
            f"UNet2DModel has {len(channels)} block_out_channels for {len(down)} down blocks; "
            "it needs one per block"
        )
    attention = [DOWN_BLOCKS[b][0] for b in down]
    if [UP_BLOCKS[b][0] for b in reversed(up)] != attention:
        raise UserError(
            f"UNet2DModel down_block_types {list(down)} and up_block_types {list(up)} put "
            "attention at different levels; this toolkit's UNet has it at the same levels"
        )
    resample_blocks = _resampling(unet, down[:-1], up[:-1])
    base = channels[0]
    if any(c % base for c in channels):
        raise UserError(
            f"UNet2DModel block_out_channels {channels} are not multiples of the first; this "
            "toolkit's UNet has model_channels x channel_mult"
        )
    size = unet.get("sample_size")
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise UserError(f"UNet2DModel sample_size {size} is not square; images here are")
        size = size[0]
    if not isinstance(size, int):
        raise UserError("UNet2DModel config.json has no sample_size; it sets the attention sizes")
    time_dim = unet.get("time_embedding_dim")
    if time_dim not in (None, 4 * base):
        raise UserError(
            f"UNet2DModel time_embedding_dim={time_dim} cannot be imported; this toolkit's "
            f"embedding is 4 x block_out_channels[0] = {4 * base}"
        )
    groups = unet.get("norm_num_groups", 32)
    attn_groups = unet.get("attn_norm_num_groups")
    if attn_groups is None and unet.get("resnet_time_scale_shift") == "scale_shift":
        raise UserError(
            "UNet2DModel with resnet_time_scale_shift=scale_shift and attn_norm_num_groups=null "
            "has a middle attention without GroupNorm, which this toolkit's attention always has"
        )
    if attn_groups not in (None, groups):
        raise UserError(
            f"UNet2DModel attn_norm_num_groups={attn_groups} differs from norm_num_groups="
            f"{groups}; this toolkit's UNet uses one number of groups"
        )
    head_dim = unet.get("attention_head_dim", 8)
    levels = [size // 2**i for i, a in enumerate(attention) if a]
    num_classes = unet.get("num_class_embeds")
    freq_shift = unet.get("freq_shift", 0)
    model = {
        "name": "diffusers",
        "arch": "unet",
        "model_channels": base,
        "channel_mult": [c // base for c in channels],
        "num_res_blocks": unet.get("layers_per_block", 2),
        "attention_resolutions": levels,
        "num_heads": 1,
        "num_head_channels": -1 if head_dim is None else head_dim,
        "dropout": float(unet.get("dropout", 0.0)),
        "resblock_updown": resample_blocks,
        "use_scale_shift_norm": unet.get("resnet_time_scale_shift") == "scale_shift",
        "residual_rescale": False,
        "num_classes": num_classes,
        "image_size": size,
        "rescale_timesteps": False,
        "norm_groups": groups,
        "norm_eps": float(unet.get("norm_eps", 1e-5)),
        "freq_shift": float(freq_shift),
        "downsample_padding": unet.get("downsample_padding", 1),
    }
    data = {"channels": unet.get("in_channels", 3), "image_size": size}
    if not unet.get("flip_sin_to_cos", True):
        notes.append(
            "flip_sin_to_cos=false: the [sin, cos] embedding is read as [cos, sin] by "
            "reordering the inputs of the first time-embedding layer"
        )
    layout = Layout(
        len(channels),
        model["num_res_blocks"],
        frozenset(i for i, a in enumerate(attention) if a),
        num_classes is not None,
        resample_blocks,
    )
    return model, data, layout


def _resampling(unet: dict, down: list, up: list) -> bool:
    """Whether the blocks that resample (all but the last of each side) do it with residual
    blocks (BigGAN) rather than convolutions: one way for all of them, as in this toolkit."""
    kinds = {"down": unet.get("downsample_type", "conv"), "up": unet.get("upsample_type", "conv")}
    found = {
        DOWN_BLOCKS[b][1] if DOWN_BLOCKS[b][1] is not None else kinds["down"] == "resnet"
        for b in down
    } | {UP_BLOCKS[b][1] if UP_BLOCKS[b][1] is not None else kinds["up"] == "resnet" for b in up}
    if len(found) > 1:
        raise UserError(
            f"UNet2DModel resamples with convolutions at some levels and residual blocks at "
            f"others (blocks {list(down)} and {list(up)}, downsample_type={kinds['down']}, "
            f"upsample_type={kinds['up']}); this toolkit's UNet does one or the other"
        )
    return found == {True}


def _check_variance(unet: dict, variance: str, source: str, unet_dir: Path) -> None:
    """A UNet with twice its input channels out learns its variance; the variance (from
    `source`) must say so, and a fixed one needs as many channels out as in."""
    from diffuse_cli.diffusion import VARIANCES as OURS

    cin, cout = unet.get("in_channels", 3), unet.get("out_channels", 3)
    if variance in OURS and cout == cin * OURS[variance].channel_factor:
        return
    if cout == 2 * cin:
        fix = "its variance is learned: variance=learned_range (the same in diffusers)"
    elif cout == cin:
        fix = "a learned variance needs twice the channels out: variance=fixed_small or fixed_large"
    else:
        fix = f"this toolkit's UNets give {cin} or {2 * cin} (a learned variance)"
    raise UserError(
        f"'{unet_dir}' has {cin} channels in and {cout} out, but variance={variance} ({source}); "
        f"{fix}"
    )


def _read_weights(unet_dir: Path) -> dict[str, torch.Tensor]:
    """The UNet's tensors from safetensors, or a .bin read with weights_only (no code runs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name in WEIGHT_FILES:
        file = unet_dir / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                return load_file(file)
            state = torch.load(file, map_location="cpu", weights_only=True)
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"'{file}' cannot be read as weights ({first})") from err
        except Exception as err:  # an unpickler refusing a global, a truncated file
            raise UserError(f"'{file}' is not a plain tensor file ({type(err).__name__})") from err
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise UserError(f"'{file}' holds no state dict of tensors")
        return state
    raise UserError(f"'{unet_dir}' has no weights: expected {' or '.join(WEIGHT_FILES)}")


def _check_tensors(theirs: dict, layout: Layout, cfg: DictConfig, unet_dir: Path) -> None:
    """The file has exactly the tensors, shape for shape, of the network these settings build."""
    from diffuse_cli.build import build_model

    with torch.device("meta"):
        needed = to_diffusers(build_model(cfg).state_dict(), layout)
    missing, unused = sorted(set(needed) - set(theirs)), sorted(set(theirs) - set(needed))
    if missing or unused:
        which = f"missing {missing[0]}" if missing else f"unexpected {unused[0]}"
        count = len(missing) + len(unused)
        more = f" and {count - 1} more" if count > 1 else ""
        raise UserError(f"'{unet_dir}' does not match its config.json ({which}{more})")
    for key, tensor in needed.items():
        shape = list(tensor.shape)
        if key == "class_embedding.weight":  # ours has the null label's row besides
            shape[0] -= 1
        if list(theirs[key].shape) != shape:
            raise UserError(
                f"'{unet_dir}': {key} has shape {list(theirs[key].shape)}, but its config.json "
                f"builds {shape}"
            )


def _sin_cos_to_cos_sin(weight: torch.Tensor) -> torch.Tensor:
    """The first time-embedding layer's weight for inputs [cos, sin] instead of [sin, cos]."""
    half = weight.shape[1] // 2
    order = list(range(half, 2 * half)) + list(range(half)) + list(range(2 * half, weight.shape[1]))
    return weight[:, order]
