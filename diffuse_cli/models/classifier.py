"""The noisy-image classifier f_phi(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021,
sec. 4.1): the UNet's encoder half (timestep embedding, input blocks, middle block) followed by
attention pooling and a linear layer to class logits.

Its input is x_t from the diffusion's forward process and the original timestep t, so its
gradient grad_x log f_phi(y | x_t, t) is meaningful all along the sampling chain. The same
network with t = 0 and clean images is a plain image classifier.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .unet import UNetEncoder


class AttentionPool(nn.Module):
    """Pool a feature map [B, C, H, W] to [B, C] by attention: the spatial mean, as an extra token,
    queries every position (learned positional embeddings on all tokens). ADM's "attention" pool
    computes every token's output and keeps the mean token's; only that query is computed here,
    which gives the same result."""

    def __init__(self, channels: int, positions: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.position = nn.Parameter(torch.randn(channels, positions + 1) / channels**0.5)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = x.reshape(b, c, -1)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1) + self.position
        qkv = self.qkv(tokens).reshape(b, 3, self.num_heads, c // self.num_heads, -1)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, N, head_dim]
        out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # the mean token's query
        return out.reshape(b, c)


class EncoderClassifier(UNetEncoder):
    """Class logits of a (noised) image: x [B, C, H, W], t int64 [B] original timesteps
    -> [B, num_classes]. Arguments as in UNet, except that `num_classes` sizes the output (the
    classifier is not label-conditioned)."""

    def __init__(self, num_classes: int, in_channels: int = 3, **unet_options):
        unet_options.pop("num_classes", None)
        super().__init__(in_channels, **unet_options)
        self.num_outputs = num_classes
        ch = self.encoder_channels
        heads = self._block_options["num_heads"]
        head_channels = self._block_options["num_head_channels"]
        if head_channels > 0:
            if ch % head_channels:
                raise ValueError(f"{ch} channels cannot be split into heads of {head_channels}")
            heads = ch // head_channels
        side = self.resolutions[-1]
        self.head_norm = self.norm(ch)
        self.pool = AttentionPool(ch, side * side, heads)
        self.classify = nn.Linear(ch, num_classes)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The pooled features [B, C] the logits are a linear function of."""
        h, _ = self.encode(x, self.embed(t, None))
        return self.pool(F.silu(self.head_norm(h)).float().to(h.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x, t))
