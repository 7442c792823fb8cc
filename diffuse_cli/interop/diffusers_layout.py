"""Which weights of this toolkit's UNet are which of diffusers' UNet2DModel, and how the tensors
of each kind of layer convert, in both directions.

Both networks are the DDPM UNet (Ho et al. 2020): an input convolution, per level residual blocks
(each followed by attention at the attention levels) and a downsampler (a strided convolution,
or a residual block with BigGAN resampling), a resblock-attention-resblock middle, a decoder with
one more block per level that consumes the skips, and GroupNorm-SiLU-convolution out. They differ
in names, in attention layout (our one 1x1 convolution to q, k and v, head after head within
each, against three linear layers) and in the null label: our label embedding has one more row
than the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RESBLOCK_KEYS = {  # ours -> diffusers' ResnetBlock2D
    "in_norm": "norm1",
    "in_conv": "conv1",
    "emb_proj": "time_emb_proj",
    "out_norm": "norm2",
    "out_conv": "conv2",
    "skip": "conv_shortcut",
}
# Checkpoints written before diffusers renamed its attention layers; it converts them on load.
LEGACY_ATTENTION_KEYS = {
    ".query.": ".to_q.",
    ".key.": ".to_k.",
    ".value.": ".to_v.",
    ".proj_attn.": ".to_out.0.",
}


@dataclass(frozen=True)
class Layout:
    """The shape of the block walk: levels, residual blocks per level in the encoder, the levels
    with attention, whether labels are embedded, and whether residual blocks resample (BigGAN,
    diffusers' "resnet" down/upsample type) instead of strided and upsampling convolutions."""

    levels: int
    num_res_blocks: int
    attention_levels: frozenset[int]
    conditional: bool
    resample_blocks: bool = False


def layer_pairs(layout: Layout) -> list[tuple[str, str, str]]:
    """(our prefix, diffusers' prefix, kind) of every layer with weights, kind one of "plain"
    (same tensors), "res", "attn" and "label"."""
    pairs = [
        ("time_embed.0", "time_embedding.linear_1", "plain"),
        ("time_embed.2", "time_embedding.linear_2", "plain"),
        ("input_blocks.0.0", "conv_in", "plain"),
    ]
    if layout.conditional:
        pairs.append(("label_embed", "class_embedding", "label"))
    k, last = 1, layout.levels - 1
    for level in range(layout.levels):
        attention = level in layout.attention_levels
        for j in range(layout.num_res_blocks):
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", "res"))
            if attention:
                pairs.append((f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", "attn"))
            k += 1
        if level != last:
            theirs = f"down_blocks.{level}.downsamplers.0"
            if layout.resample_blocks:
                pairs.append((f"input_blocks.{k}.0", theirs, "res"))
            else:
                pairs.append((f"input_blocks.{k}.0.conv", f"{theirs}.conv", "plain"))
            k += 1
    pairs += [
        ("middle_block.0", "mid_block.resnets.0", "res"),
        ("middle_block.1", "mid_block.attentions.0", "attn"),
        ("middle_block.2", "mid_block.resnets.1", "res"),
    ]
    k = 0
    for up, level in enumerate(reversed(range(layout.levels))):
        attention = level in layout.attention_levels
        for i in range(layout.num_res_blocks + 1):
            pairs.append((f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{i}", "res"))
            if attention:
                pairs.append((f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{i}", "attn"))
            if level and i == layout.num_res_blocks:
                mine = f"output_blocks.{k}.{2 if attention else 1}"
                theirs = f"up_blocks.{up}.upsamplers.0"
                if layout.resample_blocks:
                    pairs.append((mine, theirs, "res"))
                else:
                    pairs.append((f"{mine}.conv", f"{theirs}.conv", "plain"))
            k += 1
    return pairs + [("out.0", "conv_norm_out", "plain"), ("out.2", "conv_out", "plain")]


def _copy(src: dict, src_prefix: str, dst: dict, dst_prefix: str) -> None:
    for name in ("weight", "bias"):
        if f"{src_prefix}.{name}" in src:
            dst[f"{dst_prefix}.{name}"] = src[f"{src_prefix}.{name}"]


def from_diffusers(theirs: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Our state dict from a UNet2DModel's (new attention names; see LEGACY_ATTENTION_KEYS).
    The null label's row, which a diffusers network does not have, is zero."""
    ours: dict[str, torch.Tensor] = {}
    for mine, their, kind in layer_pairs(layout):
        if kind == "plain":
            _copy(theirs, their, ours, mine)
        elif kind == "res":
            for a, b in RESBLOCK_KEYS.items():
                _copy(theirs, f"{their}.{b}", ours, f"{mine}.{a}")
        elif kind == "attn":
            _copy(theirs, f"{their}.group_norm", ours, f"{mine}.norm")
            qkv = [theirs[f"{their}.to_{n}.weight"] for n in "qkv"]
            ours[f"{mine}.qkv.weight"] = torch.cat(qkv)[:, :, None, None]
            ours[f"{mine}.qkv.bias"] = torch.cat([theirs[f"{their}.to_{n}.bias"] for n in "qkv"])
            ours[f"{mine}.proj.weight"] = theirs[f"{their}.to_out.0.weight"][:, :, None, None]
            ours[f"{mine}.proj.bias"] = theirs[f"{their}.to_out.0.bias"]
        else:
            rows = theirs[f"{their}.weight"]
            ours[f"{mine}.weight"] = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
    return ours


def to_diffusers(ours: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """A UNet2DModel's state dict from ours; the null label stays as the last class row."""
    theirs: dict[str, torch.Tensor] = {}
    for mine, their, kind in layer_pairs(layout):
        if kind in ("plain", "label"):
            _copy(ours, mine, theirs, their)
        elif kind == "res":
            for a, b in RESBLOCK_KEYS.items():
                _copy(ours, f"{mine}.{a}", theirs, f"{their}.{b}")
        else:
            _copy(ours, f"{mine}.norm", theirs, f"{their}.group_norm")
            weights = ours[f"{mine}.qkv.weight"].flatten(1).chunk(3)
            biases = ours[f"{mine}.qkv.bias"].chunk(3)
            for n, w, b in zip("qkv", weights, biases, strict=True):
                theirs[f"{their}.to_{n}.weight"], theirs[f"{their}.to_{n}.bias"] = w, b
            theirs[f"{their}.to_out.0.weight"] = ours[f"{mine}.proj.weight"].flatten(1)
            theirs[f"{their}.to_out.0.bias"] = ours[f"{mine}.proj.bias"]
    return {k: v.contiguous() for k, v in theirs.items()}


def with_current_attention_names(theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the attention weights of older diffusers files (query, key, value, proj_attn)."""
    renamed = {}
    for key, value in theirs.items():
        for old, new in LEGACY_ATTENTION_KEYS.items():
            key = key.replace(old, new)
        renamed[key] = value
    return renamed
