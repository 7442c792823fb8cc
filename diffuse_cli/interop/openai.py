"""openai's improved-diffusion and guided-diffusion `UNetModel` state dicts (Nichol & Dhariwal
2021; Dhariwal & Nichol 2021) read into this toolkit's UNet.

The released `.pt` files hold only tensors, so the architecture is read from their names and
shapes: model_channels (the input convolution's width; time_channels from time_embed.0 where it
differs, as in ADM 512x512 whose channel_mult starts at 0.5), the levels and residual blocks per
level (the output blocks that upsample), channel_mult, the levels with attention, AdaGN
(emb_layers' width), BigGAN up/downsampling, the class count (label_emb) and a learned sigma (6
output channels for 3 in).
What no tensor records (heads, the image size, the schedule, rescaled timesteps) comes from the
command's config. The layers compute the same functions as ours (the sinusoidal [cos, sin]
embedding, GroupNorm with eps 1e-5 in 32 groups, the ResBlock, the zero-initialised output), so the
map is renaming plus two layouts: 1-D attention convolutions become 1x1 2-D ones, and the qkv
projection is reordered to ours (q/k/v, then heads).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from omegaconf import DictConfig

from diffuse_cli.errors import UserError
from diffuse_cli.interop.imported import ImportedNetwork

# openai's layer names inside a block -> ours
_RENAMES = (
    ("in_layers.0.", "in_norm."),
    ("in_layers.2.", "in_conv."),
    ("emb_layers.1.", "emb_proj."),
    ("out_layers.0.", "out_norm."),
    ("out_layers.3.", "out_conv."),
    ("skip_connection.", "skip."),
    ("op.", "conv."),  # Downsample's strided convolution
    ("proj_out.", "proj."),
)
_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)\.?(\d+)?\.")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an openai `.pt` file, read without unpickling code (weights_only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():  # no object of code: not torch.save's
            raise UserError(f"'{path}' is not a torch checkpoint that can be read") from err
        raise UserError(
            f"'{path}' holds pickled objects that are not plain tensors and was refused unread "
            "(loading it could run code); import a state dict saved with torch.save"
        ) from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"'{path}' is not a torch checkpoint that can be read ({first})") from err
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(
            f"'{path}' is not a state dict of tensors (an openai UNetModel's model.state_dict())"
        )
    return state


def read_openai(path: Path, cfg: DictConfig) -> ImportedNetwork:
    """The openai UNetModel state dict at `path` as an ImportedNetwork. `cfg` (the import
    command's config) gives what the tensors do not: model.num_heads / num_head_channels, the
    image size (model.image_size of a preset, else data.image_size) and use_new_attention_order."""
    return from_state_dict(load_state_dict(path), path, cfg)


def from_state_dict(state: dict[str, torch.Tensor], path: Path, cfg: DictConfig) -> ImportedNetwork:
    """read_openai of tensors already loaded (meta tensors work: only shapes are read)."""
    try:
        layout = read_layout(state, path)
    except KeyError as err:
        raise UserError(f"'{path}' is not an openai UNetModel state dict: it has no {err}") from err
    image_size = cfg.model.image_size or cfg.data.image_size
    levels = len(layout["channel_mult"])
    if image_size % 2 ** (levels - 1):
        raise UserError(
            f"data.image_size={image_size} is not divisible by 2^{levels - 1} for the {levels} "
            f"resolutions of '{path}'; pass the size it was trained at (data.image_size=N)"
        )
    model = {k: v for k, v in layout.items() if k not in ("in_channels", "out_channels")}
    model["attention_resolutions"] = [image_size // 2**level for level in layout["attention"]]
    del model["attention"]
    in_ch, out_ch = layout["in_channels"], layout["out_channels"]
    if out_ch not in (in_ch, 2 * in_ch):
        raise UserError(
            f"'{path}' has {out_ch} output channels for {in_ch} input channels; an openai UNet "
            "has as many (fixed sigma) or twice as many (learn_sigma)"
        )
    config = {"model": model, "data": {"channels": in_ch, "image_size": image_size}}
    notes = []
    if out_ch == in_ch and cfg.variance.name.startswith("learned"):
        raise UserError(
            f"variance={cfg.variance.name} needs {2 * in_ch} output channels; '{path}' has "
            f"{out_ch} (no learn_sigma): use variance=fixed_large (or fixed_small for sigma_small)"
        )
    if out_ch == 2 * in_ch:
        config["variance"] = {"name": "learned_range"}
        notes.append("learned sigma (learn_sigma): variance=learned_range")
    heads = {"num_heads": cfg.model.num_heads, "num_head_channels": cfg.model.num_head_channels}
    weights = convert(state, heads, bool(cfg.use_new_attention_order))
    if layout["num_classes"]:
        notes.append(
            f"{layout['num_classes']} classes; the null label {layout['num_classes']} has a zero "
            "embedding (the network was not trained with label dropout)"
        )
    given = [
        ("model.num_heads", "model.num_head_channels"),
        ("data.image_size", "model.image_size"),
    ]
    return ImportedNetwork("openai", config, weights, notes, given)


def read_layout(state: dict[str, torch.Tensor], path: Path) -> dict:
    """The architecture that the tensor names and shapes record (see the module docstring)."""
    need = ("time_embed.0.weight", "input_blocks.0.0.weight", "middle_block.0.", "output_blocks.")
    for key in need:
        if not any(k.startswith(key) for k in state):
            hint = (" (a noisy classifier, EncoderUNetModel, has none; import diffusion networks)"
                    if key == "output_blocks." else "")  # fmt: skip
            raise UserError(
                f"'{path}' is not an openai UNetModel state dict: it has no {key}{hint}"
            )
    emb, time_channels = state["time_embed.0.weight"].shape
    first = state["input_blocks.0.0.weight"].shape
    model_channels = first[0]  # ours: the first level's width (openai's channel_mult[0] * its)
    if first[1] not in (1, 3):
        raise UserError(
            f"'{path}' takes {first[1]} input channels: an upsampler (SuperResModel) also "
            "takes the low-resolution image, which this toolkit's UNet does not"
        )
    if emb != 4 * time_channels:
        raise UserError(
            f"'{path}': the time embedding is {tuple(state['time_embed.0.weight'].shape)}, "
            "not [4 C, C] as in an openai UNetModel"
        )
    blocks = output_blocks(state)
    ups = [i for i, kinds in enumerate(blocks) if kinds[-1] in ("up", "upres")]
    levels = len(ups) + 1
    per_level = len(blocks) // levels
    if len(blocks) % levels or ups != [per_level * (n + 1) - 1 for n in range(levels - 1)]:
        raise UserError(f"'{path}': its output blocks do not form an openai UNet's levels")
    channel_mult, attention = [], []
    for level in range(levels):
        first_block = per_level * (levels - 1 - level)
        width = state[f"output_blocks.{first_block}.0.out_layers.3.weight"].shape[0]
        if width % model_channels:
            raise UserError(f"'{path}': {width} channels at level {level} is not a multiple of "
                            f"model_channels={model_channels}")  # fmt: skip
        channel_mult.append(width // model_channels)
        if "attention" in blocks[first_block]:
            attention.append(level)
    check_norm_widths(state, path)
    scale_shift = state["middle_block.0.emb_layers.1.weight"].shape[0]
    middle = state["middle_block.0.out_layers.3.weight"].shape[0]
    label = state.get("label_emb.weight")
    return {
        "model_channels": model_channels,
        "time_channels": None if time_channels == model_channels else time_channels,
        "channel_mult": channel_mult,
        "num_res_blocks": per_level - 1,
        "attention": attention,
        "use_scale_shift_norm": scale_shift == 2 * middle,
        "resblock_updown": bool(ups) and blocks[ups[0]][-1] == "upres",
        "num_classes": None if label is None else int(label.shape[0]),
        "in_channels": int(first[1]),
        "out_channels": int(state["out.2.weight"].shape[0]),
    }


def output_blocks(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """What each output block holds, in order: "res", "attention", "up" (an Upsample's
    convolution) or "upres" (a BigGAN upsampling ResBlock, the second ResBlock of a block)."""
    found: dict[int, dict[int, str]] = {}
    for key in state:
        match = _BLOCK.match(key)
        if not match or match[1] != "output_blocks" or match[3] is None:
            continue
        rest = key[match.end() :]
        kind = "attention" if rest.startswith(("qkv", "norm", "proj_out")) else "res"
        if rest.startswith("conv."):
            kind = "up"
        found.setdefault(int(match[2]), {})[int(match[3])] = kind
    blocks = []
    for index in range(len(found)):
        layers = found.get(index)
        if not layers:
            return blocks
        kinds = [layers[i] for i in sorted(layers)]
        if len(kinds) > 1 and kinds[-1] == "res":
            kinds[-1] = "upres"
        blocks.append(kinds)
    return blocks


def check_norm_widths(state: dict[str, torch.Tensor], path: Path) -> None:
    """openai normalises in 32 groups (GroupNorm32); ours also takes 32 groups for every width
    that is a multiple of 32 from 64 on, and fewer below, so a 32-channel GroupNorm (one
    channel per group there) would be another function."""
    for key, tensor in state.items():
        if re.search(r"(in_layers\.0|out_layers\.0|\.norm|^out\.0)\.weight$", key):
            width = tensor.shape[0]
            if width % 32 or width < 64:
                raise UserError(
                    f"'{path}': {key} normalises {width} channels in 32 groups, which this "
                    "toolkit's UNet does not compute for widths below 64 (model_channels >= 64)"
                )


def heads_of(channels: int, heads: dict) -> int:
    """The heads of an attention layer over `channels`, as our AttentionBlock splits them."""
    if heads["num_head_channels"] > 0:
        return channels // heads["num_head_channels"]
    return heads["num_heads"]


def convert(state: dict[str, torch.Tensor], heads: dict, new_order: bool) -> dict:
    """openai's tensors under our names and layouts, in float32."""
    out = {}
    for key, tensor in state.items():
        tensor = tensor.float()
        ours = key
        for theirs, mine in _RENAMES:
            ours = ours.replace(f".{theirs}", f".{mine}")
        if key.endswith(("qkv.weight", "qkv.bias", "proj_out.weight")) and tensor.dim() == 3:
            tensor = tensor[..., None]  # Conv1d [out, in, 1] -> Conv2d [out, in, 1, 1]
        if key.endswith(("qkv.weight", "qkv.bias")) and not new_order:
            tensor = legacy_qkv_to_ours(tensor, heads_of(tensor.shape[0] // 3, heads))
        if key == "label_emb.weight":  # our extra last row is the null label
            ours = "label_embed.weight"
            tensor = torch.cat([tensor, tensor.new_zeros(1, tensor.shape[1])])
        out[ours] = tensor
    return out


def legacy_qkv_to_ours(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder the qkv projection's output channels from openai's legacy order (QKVAttentionLegacy:
    by head, then q/k/v, then the head's channels) to ours (q/k/v, then head, then channel), which
    is also guided-diffusion's new order (QKVAttention)."""
    three_c = tensor.shape[0]
    channels = three_c // 3
    if channels % num_heads:
        raise UserError(f"{channels} attention channels cannot be split into {num_heads} heads")
    head = channels // num_heads
    grouped = tensor.reshape(num_heads, 3, head, *tensor.shape[1:])
    return grouped.transpose(0, 1).reshape(three_c, *tensor.shape[1:])
