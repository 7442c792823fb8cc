"""Samplers of an EDM run (Karras et al. 2022, "Elucidating the Design Space"): the probability-flow
ODE dx/dsigma = (x - D(x; sigma)) / sigma (EDM eq. 3 with sigma(t) = t, s(t) = 1) on a sigma grid.

They share the signature of every sampler but take an edm.EDMDiffusion as `diffusion`. The grid
is `steps` noise levels from sigma_max down to sigma_min (EDM eq. 5 with `spacing=karras`, or
uniform in ln sigma with `logsnr`), then sigma = 0; the chain starts at x = sigma_max x_T, and the
last step, to sigma = 0, returns the denoiser's output there. With clip_denoised, D is clipped
to [-1, 1] (the toolkit's image convention; EDM's own sampler does not clip).
"""

import math

import torch

from ..diffusion import EDMDiffusion
from .noise import as_noise_source
from .options import check_options
from .steps import sampling_progress


def _denoiser(model, edm, clip_denoised, model_kwargs):
    """D(x, sigma) for a float sigma, one network evaluation."""

    def call(x, sigma):
        levels = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
        d = edm.denoise(model, x, levels, model_kwargs).to(x.dtype)
        return d.clamp(-1, 1) if clip_denoised else d

    return call


def _grid(edm, x_T, steps, spacing, progress):
    sigmas = edm.sampling_sigmas(steps, spacing)
    bar = sampling_progress(range(steps), progress)
    return sigmas, bar, sigmas[0] * x_T


@torch.no_grad()
def heun(
    model,
    diffusion: EDMDiffusion,
    x_T: torch.Tensor,
    *,
    steps: int,
    noise=None,
    spacing: str = "karras",
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = False,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """EDM's stochastic sampler (Algorithm 2), and with s_churn = 0 its deterministic Heun
    sampler (Algorithm 1): at each sigma_i in [s_tmin, s_tmax] noise is added to raise the level
    to sigma^ = (1 + gamma) sigma_i, gamma = min(s_churn / N, sqrt(2) - 1), with standard
    deviation s_noise sqrt(sigma^2 - sigma_i^2); then an Euler step to sigma_{i+1} corrected by
    the slope there (the trapezoidal rule), except for the last step to sigma = 0.
    N = `steps` grid points cost 2 N - 1 network evaluations.

    Returns:
        x_0, a tensor like x_T.
    """
    check_options(s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    noise = as_noise_source(noise, x_T.shape[0], x_T.device)
    denoise = _denoiser(model, diffusion, clip_denoised, model_kwargs)
    sigmas, bar, x = _grid(diffusion, x_T, steps, spacing, progress)
    gamma_max = min(s_churn / steps, math.sqrt(2) - 1)
    for i in bar:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise.randn_like(x)
        slope = (x - denoise(x, sigma_hat)) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * slope
        if sigma_next > 0:
            slope_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (slope + slope_next)
        x = x_next
    return x


@torch.no_grad()
def euler(
    model,
    diffusion: EDMDiffusion,
    x_T: torch.Tensor,
    *,
    steps: int,
    noise=None,
    spacing: str = "karras",
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Euler on the probability-flow ODE in sigma (EDM Algorithm 1 without the correction),
    x' = x + (sigma' - sigma) (x - D) / sigma; `steps` network evaluations, deterministic."""
    as_noise_source(noise, x_T.shape[0], x_T.device)
    denoise = _denoiser(model, diffusion, clip_denoised, model_kwargs)
    sigmas, bar, x = _grid(diffusion, x_T, steps, spacing, progress)
    for i in bar:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x = x + (sigma_next - sigma) * (x - denoise(x, sigma)) / sigma
    return x


@torch.no_grad()
def ddim(
    model,
    diffusion: EDMDiffusion,
    x_T: torch.Tensor,
    *,
    steps: int,
    noise=None,
    spacing: str = "karras",
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = False,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 and 16) written in sigma: with eps = (x - D) / sigma,

        x' = D + sqrt(sigma'^2 - c^2) eps + c z,   c = eta sigma' sqrt(1 - sigma'^2 / sigma^2)

    which is their update for x / sqrt(abar) (a VP process and this one share x~ = x0 + sigma
    eps). eta = 0 is the Euler step; eta = 1 samples the posterior p(x_{sigma'} | x, D) exactly
    (ancestral sampling of the variance-exploding process). `steps` network evaluations.
    """
    check_options(eta=eta)
    noise = as_noise_source(noise, x_T.shape[0], x_T.device)
    denoise = _denoiser(model, diffusion, clip_denoised, model_kwargs)
    sigmas, bar, x = _grid(diffusion, x_T, steps, spacing, progress)
    for i in bar:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = denoise(x, sigma)
        c = eta * sigma_next * math.sqrt(1 - (sigma_next / sigma) ** 2)
        x = d + math.sqrt(sigma_next**2 - c**2) * (x - d) / sigma
        if c > 0:
            x = x + c * noise.randn_like(x)
    return x


@torch.no_grad()
def dpm_solver(
    model,
    diffusion: EDMDiffusion,
    x_T: torch.Tensor,
    *,
    steps: int,
    noise=None,
    spacing: str = "karras",
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = False,
    order: int = 2,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, data prediction) in sigma: with
    lambda = -ln sigma and h = ln(sigma / sigma'), a step is

        x' = (sigma' / sigma) x + (1 - sigma' / sigma) D~,
        D~ = D (order 1: the Euler step)  or  (1 + 1 / (2 r)) D - 1 / (2 r) D_prev, r = h_prev / h

    first order at the first step and at the last, to sigma = 0, which returns D. `steps`
    network evaluations, deterministic.
    """
    check_options(order=order)
    as_noise_source(noise, x_T.shape[0], x_T.device)
    denoise = _denoiser(model, diffusion, clip_denoised, model_kwargs)
    sigmas, bar, x = _grid(diffusion, x_T, steps, spacing, progress)
    d_prev, h_prev = None, None
    for i in bar:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = denoise(x, sigma)
        if sigma_next == 0:
            return d
        h = math.log(sigma / sigma_next)
        mixed = d
        if order == 2 and d_prev is not None:
            r = h_prev / h
            mixed = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * d_prev
        ratio = sigma_next / sigma
        x = ratio * x + (1 - ratio) * mixed
        d_prev, h_prev = d, h
    return x
