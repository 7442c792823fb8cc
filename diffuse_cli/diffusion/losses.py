"""Training losses by config name: L_simple, the variational bound L_VLB and L_hybrid for a
GaussianDiffusion, denoising score matching (`dsm`) for the noise levels of an NCSN, and EDM's
weighted denoiser loss (EDMLoss, what loss=simple means for schedule=edm).

Each loss is a small object called as

    loss(diffusion, model, x0, t, noise=None, model_kwargs=None) -> dict of [B] tensors

with one sampled t per example (int64 [B], indices into `diffusion`). "loss" is what the
trainer averages (after multiplying by the timestep sampler's importance weights); "mse" and
"vlb" are the parts it is made of where they exist. "vlb" is always the single bound term L_t
at the example's t in bits/dim, unscaled, which is what the importance sampler's history keeps;
"mse" is the unweighted L_simple term, which `loss.weighting` (weighting.py) scales in "loss".

L_VLB = L_T + sum_t L_t is a sum over T terms; with t uniform, L_T + T L_t is an unbiased
one-sample estimate of it (and with importance weights 1 / (T p_t) it stays unbiased).
"""

from __future__ import annotations

import torch

from .gaussian import gather, mean_flat
from .weighting import get_weighting


def _forward(diffusion, model, x0, t, noise, model_kwargs):
    """Noise x0 to x_t, call the model once and split its output.

    Returns (x_t, noise, mean_part, log_variance), all [B, ...].
    """
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = diffusion.q_sample(x0, t, noise)
    out = model(x_t, diffusion.model_timesteps(t), **(model_kwargs or {}))
    mean_part, log_variance = diffusion.variance.split(diffusion, out, t)
    return x_t, noise, mean_part, log_variance


def _vlb(diffusion, x0, x_t, t, mean_part, log_variance):
    """(L_t in bits/dim [B], the one-sample estimate L_T + T L_t of L_VLB [B]); no clipping.
    Computed in float32 at least, also when the model ran in fp16/bf16."""
    dtype = torch.promote_types(x0.dtype, torch.float32)
    x0, x_t, mean_part, log_variance = (v.to(dtype) for v in (x0, x_t, mean_part, log_variance))
    p = diffusion.p_from_parts(mean_part, log_variance, x_t, t, clip_denoised=False)
    term = diffusion.vlb_terms(x0, x_t, t, p["mean"], p["log_variance"])
    return term, diffusion.prior_bpd(x0) + diffusion.num_timesteps * term


def _weighted(weighting, diffusion, mse, t):
    """The L_simple term times its per-timestep weight; itself, untouched, without one."""
    return mse if weighting is None else mse * weighting(diffusion, t, mse)


class SimpleLoss:
    """L_simple = ||target - output||^2 (Ho et al. 2020, eq. 14) on the mean part, times the
    weighting's per-timestep weight if there is one; a learned variance gets no gradient from
    it (train it with loss=hybrid)."""

    name = "simple"

    def __init__(self, weighting=None):
        self.weighting = weighting

    def __call__(self, diffusion, model, x0, t, noise=None, model_kwargs=None):
        _, noise, mean_part, _ = _forward(diffusion, model, x0, t, noise, model_kwargs)
        mse = diffusion.mse_term(x0, noise, t, mean_part)
        return {"loss": _weighted(self.weighting, diffusion, mse, t), "mse": mse}


class VLBLoss:
    """L_VLB (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, sec. 3.1) in bits/dim, estimated by
    L_T + T L_t with one t per example; trains the mean and the variance."""

    name = "vlb"

    def __call__(self, diffusion, model, x0, t, noise=None, model_kwargs=None):
        x_t, _, mean_part, log_variance = _forward(diffusion, model, x0, t, noise, model_kwargs)
        term, estimate = _vlb(diffusion, x0, x_t, t, mean_part, log_variance)
        return {"loss": estimate, "vlb": term}


class HybridLoss:
    """L_hybrid = L_simple + lam L_VLB (Nichol & Dhariwal 2021, eq. 16, lam = 0.001).

    The VLB term sees the mean part with its gradient stopped, so L_simple alone trains the mean
    and the VLB term trains only the variance (their sec. 3.1). L_VLB is estimated by L_T + T L_t,
    as in improved-diffusion's RESCALED_MSE (vb * T / 1000 with lam = 0.001). A weighting
    scales the L_simple part only: the VLB term stays an unbiased estimate of the bound.
    """

    name = "hybrid"

    def __init__(self, lam: float = 0.001, weighting=None):
        self.lam = lam
        self.weighting = weighting

    def __call__(self, diffusion, model, x0, t, noise=None, model_kwargs=None):
        x_t, noise, mean_part, log_variance = _forward(diffusion, model, x0, t, noise, model_kwargs)
        mse = diffusion.mse_term(x0, noise, t, mean_part)
        term, estimate = _vlb(diffusion, x0, x_t, t, mean_part.detach(), log_variance)
        simple = _weighted(self.weighting, diffusion, mse, t)
        return {"loss": simple + self.lam * estimate, "mse": mse, "vlb": term}


class DSMLoss:
    """Denoising score matching over noise levels, weighted by lambda(sigma) = sigma^2 (Song &
    Ermon 2019, eq. 2, 5 and 6; the denoising objective of Vincent 2011):

        l(i) = 1/2 sigma_i^2 E ||s(x0 + sigma_i z, sigma_i) + z / sigma_i||^2
             = 1/2 E ||sigma_i s + z||^2,                z ~ N(0, I)

    The weight makes every level's term of order 1, since ||sigma s|| ~ ||z|| at the optimum.
    As everywhere in losses.py the squared norm is averaged over dimensions, not summed as in
    the paper: a constant factor that Adam does not see. For Gaussian data N(mu, s^2 I) the
    optimal score is -(x - mu) / (s^2 + sigma^2) and l(i) = s^2 / (2 (s^2 + sigma_i^2)) per
    dimension. `levels` is a diffusion.ncsn.NoiseLevels; t are level indices [B].
    """

    name = "dsm"

    def __call__(self, levels, model, x0, t, noise=None, model_kwargs=None):
        if noise is None:
            noise = torch.randn_like(x0)
        x = levels.q_sample(x0, t, noise)
        score = levels.score(model, x, t, model_kwargs)
        dtype = torch.promote_types(x0.dtype, torch.float32)
        sigma = gather(levels.sigmas, t, x0.to(dtype))
        loss = 0.5 * mean_flat((sigma * score.to(dtype) + noise.to(dtype)) ** 2)
        return {"loss": loss, "mse": loss}


class EDMLoss:
    """The denoiser loss of EDM (Karras et al. 2022, eq. 2 and Table 1) for schedule=edm:

        lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2,
        lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2

    averaged over dimensions, with sigma drawn by the trainer (edm.LogNormalSigmas). lambda is
    1 / c_out^2, so this is the plain MSE of F against its effective target. For data
    N(mu, s^2 I) the optimal D gives ||D - x0||^2 = s^2 sigma^2 / (s^2 + sigma^2) per dimension.
    `edm` is a diffusion.edm.EDMDiffusion; t are the noise levels sigma [B] (float).
    """

    name = "edm"

    def __call__(self, edm, model, x0, t, noise=None, model_kwargs=None):
        if noise is None:
            noise = torch.randn_like(x0)
        dtype = torch.promote_types(x0.dtype, torch.float32)
        sigma = t.to(dtype)
        denoised = edm.denoise(model, edm.q_sample(x0, sigma, noise), sigma, model_kwargs)
        mse = mean_flat((denoised.to(dtype) - x0.to(dtype)) ** 2)
        return {"loss": edm.loss_weight(sigma) * mse, "mse": mse}


LOSSES = {cls.name: cls for cls in (SimpleLoss, VLBLoss, HybridLoss, DSMLoss)}
WEIGHTED = ("simple", "hybrid")  # the losses with an L_simple term that loss.weighting scales


def get_loss(name: str, lam: float = 0.001, weighting: str = "uniform", snr_gamma: float = 5.0):
    """The loss called `name`; `lam` is used by hybrid only, `weighting` (and its `snr_gamma`)
    by simple and hybrid. ValueError names the choices, or the weighting a loss cannot take."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid choices are: {', '.join(sorted(LOSSES))}.")
    weights = get_weighting(weighting, snr_gamma)
    if weights is not None and name not in WEIGHTED:
        raise ValueError(refused_weighting(name, weighting))
    if name == "hybrid":
        return HybridLoss(lam, weights)
    return SimpleLoss(weights) if name == "simple" else LOSSES[name]()


def refused_weighting(loss: str, weighting: str) -> str:
    """Why loss=`loss` takes no loss.weighting but uniform, and what to change."""
    if loss == "dsm":
        why, fix = "its levels are weighted by sigma^2", "loss.weighting=uniform"
    else:
        why, fix = "the bound keeps its own weights", "loss=simple or loss.weighting=uniform"
    return (
        f"loss.weighting={weighting} scales the L_simple term of loss=simple or hybrid, and "
        f"loss={loss} has none ({why}); use {fix}"
    )
