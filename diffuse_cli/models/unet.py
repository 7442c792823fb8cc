"""The UNet noise-prediction network of DDPM (Ho et al. 2020, appendix B), with the options that
improved DDPM and ADM added (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021).

With model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,)
it is the 35.7M-parameter CIFAR-10 network of the DDPM paper. The ADM options (section 3 of
Dhariwal & Nichol): attention at several resolutions with a fixed number of channels per head
(`num_head_channels`), AdaGN (`use_scale_shift_norm`), BigGAN up/downsampling residual blocks
(`resblock_updown`), and residual connections rescaled by 1/sqrt(2) (`residual_rescale`, tried in
the paper but off in its released models). The configs/model/ presets hold the published settings.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .dropout import Dropout
from .embeddings import label_embedding, timestep_embedding


def norm_groups(channels: int) -> int:
    """GroupNorm groups: the largest divisor of `channels` that is at most 32 and leaves at least
    two channels per group, so the published widths get the usual 32 groups and small CPU widths
    (8, 16, 48, ...) still work."""
    for groups in range(min(32, max(channels // 2, 1)), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def normalization(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


class GroupNormOf:
    """Makes the network's GroupNorms: `groups` groups everywhere (the published networks' 32,
    or any other count, as diffusers' norm_num_groups), or None for the `norm_groups` rule; `eps`
    as torch's default 1e-5 or, e.g., the 1e-6 of the TensorFlow DDPM."""

    def __init__(self, groups: int | None = None, eps: float = 1e-5):
        if groups is not None and groups < 1:
            raise ValueError(f"norm_groups must be null or >= 1, not {groups}")
        self.groups, self.eps = groups, eps

    def __call__(self, channels: int) -> nn.GroupNorm:
        if self.groups is None:
            return nn.GroupNorm(norm_groups(channels), channels, eps=self.eps)
        if channels % self.groups:
            raise ValueError(f"{channels} channels cannot be split into {self.groups} norm groups")
        return nn.GroupNorm(self.groups, channels, eps=self.eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so a residual branch (or the whole net) starts as the identity
    (or as 0). Uses in-place init, which also works on the meta device."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def rescaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x * scale, without the pass over the tensor when the scale is 1 (the usual case)."""
    return x if scale == 1.0 else x * scale


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 convolution (DDPM). `padding` 1 pads every side;
    0 pads only the right and bottom by one, as TensorFlow's "SAME" padding of the original DDPM
    code (diffusers' downsample_padding=0)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"downsample_padding must be 0 or 1, not {padding}")
        self.pad_bottom_right = padding == 0
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_bottom_right:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling then a 3x3 convolution (DDPM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv3x3(x, self.conv)


def upsample_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(x upsampled 2x by nearest neighbour), computed as one stride-2 transposed convolution
    of x itself.

    Every output pixel of the 3x3 convolution sees only 2x2 distinct input pixels, since nearest
    upsampling repeats each one; folding the repeated taps of the kernel together gives a 4x4
    kernel with stride 2 that does 16 instead of 36 multiply-adds per input pixel and never
    materialises the upsampled tensor. The result equals the direct form to float rounding. On
    small maps, where the convolutions themselves are cheap, the direct form is faster and is
    kept: below 8x8 input pixels in float32 and below 16x16 under bf16 autocast (measured:
    docs/benchmarks/bench.md, change 3).
    """
    reduced = x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(x.device.type)
    if x.shape[-2] * x.shape[-1] < (256 if reduced else 64):
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    kernel = _fold_repeated_taps(_fold_repeated_taps(conv.weight, -2), -1)
    return F.conv_transpose2d(x, kernel.transpose(0, 1), conv.bias, stride=2, padding=1)


def _fold_repeated_taps(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """A 3-tap kernel axis [w0, w1, w2] as the 4 taps a stride-2, padding-1 transposed
    convolution needs: even outputs are w0 x[i-1] + (w1 + w2) x[i], odd ones
    (w0 + w1) x[i] + w2 x[i+1]."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def _resample(up: bool, down: bool) -> nn.Module:
    """Parameter-free resampling used inside BigGAN-style resblocks (ADM)."""
    if up and down:
        raise ValueError("a residual block resamples up or down, not both")
    if up:
        return nn.Upsample(scale_factor=2.0, mode="nearest")
    if down:
        return nn.AvgPool2d(2)
    return nn.Identity()


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding (time + class).

    DDPM adds the projected embedding after the first convolution; with `scale_shift` it
    modulates the second GroupNorm instead (AdaGN, Dhariwal & Nichol 2021, section 3):
    GroupNorm(h) * (1 + scale) + shift, with scale and shift projected from the embedding. With
    `up` or `down` the block also resamples (BigGAN, used by ADM's resblock_updown): the skip path
    and the residual path are resampled without parameters (nearest / average pooling) before the
    first convolution. With `rescale` the sum skip + residual is multiplied by 1/sqrt(2). The last
    convolution is zero-initialised so the block starts as its skip connection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        scale_shift: bool = False,
        up: bool = False,
        down: bool = False,
        rescale: bool = False,
        norm=normalization,
    ):
        super().__init__()
        self.scale_shift = scale_shift
        self.skip_scale = 1 / math.sqrt(2) if rescale else 1.0
        self.in_norm = norm(in_channels)
        self.up = up  # the first convolution then runs folded on the small map
        self.resample = _resample(up, down)
        self.in_conv = conv3x3(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1))
        self.out_norm = norm(out_channels)
        self.dropout = Dropout(dropout)
        self.out_conv = zero_module(conv3x3(out_channels, out_channels))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        h = upsample_conv3x3(h, self.in_conv) if self.up else self.in_conv(self.resample(h))
        x = self.resample(x)
        e = self.emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return rescaled(self.skip(x) + h, self.skip_scale)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions of a feature map (torch's
    scaled_dot_product_attention), with a residual connection whose output projection starts at
    zero. `num_head_channels` > 0 fixes the channels per head (ADM) and overrides `num_heads`.
    With `rescale` the residual sum is multiplied by 1/sqrt(2)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        rescale: bool = False,
        norm=normalization,
    ):
        super().__init__()
        if num_head_channels > 0:
            if channels % num_head_channels:
                raise ValueError(
                    f"{channels} channels cannot be split into heads of {num_head_channels}"
                )
            num_heads = channels // num_head_channels
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.skip_scale = 1 / math.sqrt(2) if rescale else 1.0
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The 1x1 convolutions run as linear layers on the [B, HW, C] tokens (the same weights),
        # so q, k and v come out with head_dim as their unit-stride dimension: that layout lets
        # scaled_dot_product_attention take its fused kernel on CPU (with q, k, v strided along
        # head_dim it falls back to the unfused math path; docs/benchmarks/bench.md, change 1).
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        qkv = F.linear(tokens, self.qkv.weight.view(3 * c, c), self.qkv.bias)
        qkv = qkv.view(b, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, HW, head_dim]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        out = F.linear(out, self.proj.weight.view(c, c), self.proj.bias)
        return rescaled(x + out.transpose(1, 2).reshape(b, c, h, w), self.skip_scale)


class EmbedSequential(nn.Sequential):
    """A sequence of layers where the residual blocks also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetEncoder(nn.Module):
    """The encoder half of the UNet: the timestep (and label) embedding, the input blocks and the
    middle block. The UNet adds the decoder on top; the noisy-image classifier of ADM (Dhariwal &
    Nichol 2021, sec. 4) adds a pooling head instead. Arguments as in UNet.

    With `num_classes` the label embedding has num_classes + 1 rows: row `num_classes` is the
    learned null label that classifier-free guidance trains with label dropout (Ho & Salimans
    2022) and samples the unconditional branch with.
    """

    def __init__(
        self,
        in_channels: int = 3,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        num_heads: int = 1,
        image_size: int = 32,
        num_classes: int | None = None,
        resblock_updown: bool = False,
        use_scale_shift_norm: bool = False,
        num_head_channels: int = -1,
        residual_rescale: bool = False,
        use_checkpoint: bool = False,
        channels_last: bool = False,
        timestep_scale: float = 1.0,
        time_channels: int | None = None,
        norm_groups: int | None = None,
        norm_eps: float = 1e-5,
        freq_shift: float = 0.0,
        downsample_padding: int = 1,
    ):
        super().__init__()
        levels = len(channel_mult)
        if model_channels < 1 or not channel_mult or min(channel_mult) < 1:
            raise ValueError(
                f"model_channels ({model_channels}) and every channel_mult entry "
                f"({list(channel_mult)}) must be >= 1, with at least one entry"
            )
        if num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, not {num_res_blocks}")
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size {image_size} must be divisible by 2^{levels - 1} "
                f"for {levels} resolutions (channel_mult={tuple(channel_mult)})"
            )
        resolutions = [image_size // 2**level for level in range(levels)]
        unknown = sorted(set(attention_resolutions) - set(resolutions))
        if unknown:
            raise ValueError(
                f"attention_resolutions {unknown} are not feature-map sizes of this UNet; "
                f"valid sizes are {resolutions}"
            )
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.channels_last = channels_last
        self.timestep_scale = timestep_scale
        self.freq_shift = freq_shift
        self.norm = GroupNormOf(norm_groups, norm_eps)
        self.resolutions = resolutions
        self.channel_mult, self.num_res_blocks = tuple(channel_mult), num_res_blocks
        self.resblock_updown = resblock_updown
        self.time_channels = time_channels or model_channels
        emb_channels = 4 * self.time_channels

        self.time_embed = nn.Sequential(
            nn.Linear(self.time_channels, emb_channels),
            nn.SiLU(),
            nn.Linear(emb_channels, emb_channels),
        )
        self.label_embed = label_embedding(num_classes, emb_channels)

        self._block_options = dict(
            emb_channels=emb_channels,
            dropout=dropout,
            scale_shift=use_scale_shift_norm,
            rescale=residual_rescale,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            attention_resolutions=tuple(attention_resolutions),
        )
        res, with_attention = self.res_block, self.with_attention
        ch = model_channels
        self.input_blocks = nn.ModuleList(
            [EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
        )
        self.skip_channels = [ch]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                block = res(ch, mult * model_channels)
                ch = mult * model_channels
                self.input_blocks.append(EmbedSequential(*with_attention(block, ch, level)))
                self.skip_channels.append(ch)
            if level != levels - 1:
                if resblock_updown:
                    down = res(ch, ch, down=True)
                else:
                    down = Downsample(ch, downsample_padding)
                self.input_blocks.append(EmbedSequential(down))
                self.skip_channels.append(ch)

        self.middle_block = EmbedSequential(res(ch, ch), self.attention(ch), res(ch, ch))
        self.encoder_channels = ch

    def res_block(self, cin: int, cout: int, up: bool = False, down: bool = False) -> ResBlock:
        o = self._block_options
        return ResBlock(
            cin,
            cout,
            o["emb_channels"],
            o["dropout"],
            o["scale_shift"],
            up,
            down,
            o["rescale"],
            self.norm,
        )

    def attention(self, channels: int) -> "AttentionBlock":
        o = self._block_options
        return AttentionBlock(
            channels, o["num_heads"], o["num_head_channels"], o["rescale"], self.norm
        )

    def with_attention(self, block: ResBlock, channels: int, level: int) -> list[nn.Module]:
        """[block], followed by attention when level's resolution is in attention_resolutions."""
        if self.resolutions[level] in self._block_options["attention_resolutions"]:
            return [block, self.attention(channels)]
        return [block]

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The block conditioning: time embedding plus the label embedding (label
        `num_classes` is the null label)."""
        emb = timestep_embedding(
            t, self.time_channels, scale=self.timestep_scale, freq_shift=self.freq_shift
        )
        emb = self.time_embed(emb.to(self.time_embed[0].weight.dtype))
        if self.label_embed is not None:
            if y is None:
                raise ValueError(
                    f"this network is class-conditional: pass labels y (0..{self.num_classes - 1}"
                    f", or {self.num_classes} for the null label)"
                )
            return emb + self.label_embed(y)
        if y is not None:
            raise ValueError("labels y were given to an unconditional network (num_classes=None)")
        return emb

    def encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(the middle block's output, the skip activations of every input block)."""
        h = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        skips = []
        for block in self.input_blocks:
            h = self._run(block, h, emb)
            skips.append(h)
        return self._run(self.middle_block, h, emb), skips

    def _run(self, block: EmbedSequential, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Run one block, through gradient checkpointing when it is on and gradients are taken."""
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)


class UNet(UNetEncoder):
    """Timestep- (and optionally class-) conditioned UNet: x [B, C, H, W], t int64 [B] (original
    timesteps 0..T-1), y int64 [B] labels -> [B, out_channels, H, W].

    The encoder has `num_res_blocks` residual blocks per resolution and the decoder one more
    (that one consumes the skip of the downsampling layer); the middle block is
    resblock-attention-resblock. `attention_resolutions` lists feature-map sizes in pixels
    (16 = the 16x16 maps). The output convolution is zero-initialised, so the untrained
    network predicts 0. `out_channels` is twice the data channels when the variance is learned.

    Two options change how the network runs, not what it computes: `use_checkpoint` recomputes
    each block's activations in the backward pass (torch.utils.checkpoint, non-reentrant, same
    dropout masks) to save memory while training; `channels_last` stores the 4-D weights and
    runs the activations in channels_last (NHWC) memory format, which convolution kernels on
    GPUs with tensor cores and on recent CPUs prefer. State dicts keep the same keys and values.
    One exception: with dropout in training, the same seed draws the mask in the activations'
    memory order, so a run that switches `channels_last` on resume draws other masks.

    `timestep_scale` multiplies t before the sinusoidal embedding: 1000 / T gives the network
    of a T-step chain the inputs of a 1000-step one, as improved-diffusion's rescale_timesteps.
    `time_channels` (default model_channels) is the number of sinusoidal features, embedded in
    4x as many channels: ADM's 512x512 network has 256 of them over a first level of 128.

    Conventions of other codebases, exact where set (the defaults are this toolkit's own):
    `norm_groups` fixes the GroupNorm groups (None: `norm_groups`' rule), `norm_eps` their eps,
    `freq_shift` the embedding's frequency divisor (see timestep_embedding), and
    `downsample_padding` 0 pads only right and bottom before a stride-2 convolution.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, **kwargs):
        super().__init__(in_channels, **kwargs)
        self.out_channels = out_channels
        res, with_attention = self.res_block, self.with_attention
        model_channels, num_res_blocks = self.model_channels, self.num_res_blocks
        skip_channels = list(self.skip_channels)
        ch = self.encoder_channels
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                block = res(ch + skip_channels.pop(), mult * model_channels)
                ch = mult * model_channels
                layers = with_attention(block, ch, level)
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if self.resblock_updown else Upsample(ch))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            self.norm(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.embed(t, y)
        h, skips = self.encode(x, emb)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
