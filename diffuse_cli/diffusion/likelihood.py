"""Likelihood pieces of the variational bound: Gaussian KL, the discretized Gaussian decoder and
bits per dimension (Ho et al. 2020, eq. 5 and sec. 3.3; Nichol & Dhariwal 2021, sec. 3.1).

All functions are elementwise on tensors of any shape (broadcasting) and return nats, except
`bits_per_dim`, which turns per-element nats into per-example bits per dimension.
"""

import math

import torch

# 8-bit data scaled to [-1, 1]: 256 levels 2/255 apart, so each bin reaches 1/255 either side.
BIN_HALF_WIDTH = 1.0 / 255.0


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats.

    0.5 (log var2 / var1 + var1 / var2 + (mean1 - mean2)^2 / var2 - 1); arguments broadcast.
    """
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def _log_normal_mass(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for standardized edges lower < upper, accurate in both tails.

    Written as log Phi(b) + log(1 - Phi(a) / Phi(b)) on the side of the mean where the interval
    lies (mirrored when it lies above the mean), so both log-CDFs are taken where they are
    small and torch.special.log_ndtr is accurate. An interval much narrower than the scale uses
    the midpoint rule width * pdf(mid) * (1 + width^2 (mid^2 - 1) / 24) instead, where the
    difference of two nearly equal log-CDFs would lose its digits.
    """
    flip = (lower + upper) > 0
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    log_b = torch.special.log_ndtr(b)
    diff = (torch.special.log_ndtr(a) - log_b).clamp(max=-1e-30)  # < 0; the clamp keeps log finite
    exact = log_b + torch.log(-torch.expm1(diff))
    width = upper - lower
    mid = 0.5 * (upper + lower)
    narrow = (
        torch.log(width)
        - 0.5 * mid**2
        - 0.5 * math.log(2 * math.pi)
        + torch.log1p(width**2 * (mid**2 - 1) / 24)
    )
    # The two errors, eps / width and width^4, balance near width = eps^(1/3).
    return torch.where(width < torch.finfo(width.dtype).eps ** (1 / 3), narrow, exact)


def discretized_gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """log p(x) per element for x on the 8-bit grid of [-1, 1] under a Gaussian N(mean, scale^2)
    discretized into 256 bins: the bin of x is [x - 1/255, x + 1/255], except that the bins of
    -1 and +1 are open to -inf and +inf, so the 256 probabilities sum to 1 (Ho et al. 2020,
    eq. 13). In nats, in x's dtype (float32 at least).

    Computed in float64 (except on MPS, which has none): far in the tails the standardized
    edges reach 1e6 and float32 log-CDFs there lose all their digits (and their gradients).

    Args:
        x: data on the grid k / 127.5 - 1 (any shape).
        mean, log_scale: the Gaussian's mean and log standard deviation (broadcastable to x).
    """
    out_dtype = torch.promote_types(x.dtype, torch.float32)
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    x, mean, log_scale = (v.to(wide) for v in (x, mean, log_scale))
    inv_scale = torch.exp(-log_scale)
    lower = (x - mean - BIN_HALF_WIDTH) * inv_scale
    upper = (x - mean + BIN_HALF_WIDTH) * inv_scale
    middle = _log_normal_mass(lower, upper)
    first = torch.special.log_ndtr(upper)  # (-inf, -1 + 1/255]
    last = torch.special.log_ndtr(-lower)  # [1 - 1/255, inf)
    log_p = torch.where(x < -0.999, first, torch.where(x > 0.999, last, middle))
    return log_p.to(out_dtype)


def bits_per_dim(nats: torch.Tensor) -> torch.Tensor:
    """Per-element nats [B, ...] -> per-example bits per dimension [B] (mean over dims / ln 2)."""
    return nats.reshape(nats.shape[0], -1).mean(dim=1) / math.log(2.0)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round data in [-1, 1] to the nearest of the 256 levels k / 127.5 - 1 (clamped)."""
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0
