"""Dropout with cheaper random masks on the CPU.

torch's CPU dropout draws each mask element with `bernoulli_`, which spends two 32-bit draws of
the Mersenne Twister and a double-precision comparison per element, serially, before it scales
and multiplies. Here one 32-bit draw decides each element (keep it when the draw is below
round((1 - p) 2^32)), so the keep probability is exact to 2^-32 at a lower cost (measured:
docs/benchmarks/bench.md, change 4). The draws come from the same default generator, so
seeding, gradient checkpointing's replay and exact resume work as before. On other devices,
and under torch.compile, torch's fused dropout is cheap already and is used unchanged.
"""

import torch
import torch.nn.functional as F
from torch import nn

_INT32_SPAN = 2**32


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p), like F.dropout."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if (
        x.device.type != "cpu"
        or p == 1.0
        or not x.is_floating_point()
        or torch.compiler.is_compiling()  # the compiler fuses dropout with its own generator
    ):
        return F.dropout(x, p, training)
    threshold = min(round((1.0 - p) * _INT32_SPAN) - 2**31, 2**31 - 1)  # p < 2^-33: int32 max
    keep = random_int32_like(x) < threshold
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))  # autograd keeps the scaled mask


def random_int32_like(x: torch.Tensor) -> torch.Tensor:
    """Uniform int32 values over the whole range, laid out like x (so a channels_last input gets a
    channels_last mask and the selection stays one dense pass). Drawn as full-range int64 values
    cut in halves: one 64-bit draw per two elements, faster than one int32 draw per element."""
    n = x.numel()
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None)  # every bit uniform
    strides = torch.empty_like(x, device="meta").stride()  # x's layout, made dense
    return words.view(torch.int32)[:n].as_strided(x.shape, strides)


class Dropout(nn.Dropout):
    """nn.Dropout (same arguments, no parameters) whose CPU masks come from `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
