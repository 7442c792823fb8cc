"""The EDM formulation (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models"): a continuous noise level sigma, a preconditioned denoiser, log-normal
training noise levels and the Karras sampling grid.

The data are noised as x = x0 + sigma n, n ~ N(0, I) (no scaling of x0), and the network F
becomes a denoiser by the preconditioning of EDM Table 1:

    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)
    c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in = 1 / sqrt(sigma^2 + sigma_data^2)
    c_noise = ln(sigma) / 4

chosen so that the network's input and its training target F* = (x0 - c_skip x) / c_out have
unit variance for data of standard deviation sigma_data (EDM app. B.6). Training draws
ln sigma ~ N(p_mean, p_std^2) and weights ||D - x0||^2 by lambda(sigma) = 1 / c_out^2 =
(sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which makes the loss F's plain MSE.

The network is conditioned on the float c_noise where a DDPM network takes its integer t. This
module is pure torch and, like gaussian.py, holds no nn.Module.
"""

from __future__ import annotations

import math

import torch

EDM_SCHEDULES = ("edm",)
DEFAULT_SAMPLING_STEPS = 18  # EDM's CIFAR-10 setting: heun at 35 network evaluations
SIGMA_GRIDS = ("karras", "logsnr")


def _column(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sigma [B] (or a scalar) as [B, 1, ...] to broadcast against x [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.dim() - 1)))


class EDMDiffusion:
    """The preconditioning, the training noise levels and the sampling grid of EDM; the
    continuous-sigma counterpart of GaussianDiffusion and NoiseLevels.

    Args:
        sigma_data: the data's standard deviation the preconditioning assumes (0.5 for images in
            [-1, 1]).
        p_mean, p_std: ln sigma ~ N(p_mean, p_std^2) during training (EDM Table 1).
        sigma_min, sigma_max, rho: the sampling grid (EDM eq. 5).
    """

    def __init__(
        self,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
    ):
        if not sigma_data > 0:
            raise ValueError(f"schedule.sigma_data={sigma_data} must be > 0.")
        if not p_std > 0:
            raise ValueError(f"schedule.p_std={p_std} must be > 0.")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"schedule=edm needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min} and "
                f"sigma_max={sigma_max}."
            )
        if not rho > 0:
            raise ValueError(f"schedule.rho={rho} must be > 0.")
        self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)

    def __repr__(self):
        return (
            f"EDMDiffusion(sigma_data={self.sigma_data:g}, ln sigma ~ N({self.p_mean:g}, "
            f"{self.p_std:g}^2), grid {self.sigma_max:g} -> {self.sigma_min:g}, rho={self.rho:g})"
        )

    # The preconditioning (EDM Table 1); sigma is a tensor, the results have its shape.
    def c_skip(self, sigma):
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma):
        return 1 / (sigma**2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma):
        return sigma.log() / 4

    def sigma_of_noise_label(self, c_noise):
        """The sigma whose c_noise the network was given (the inverse of c_noise)."""
        return (4 * c_noise).exp()

    def loss_weight(self, sigma):
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1)."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def q_sample(self, x0, sigma, noise=None):
        """x = x0 + sigma noise for noise levels sigma [B]."""
        if noise is None:
            noise = torch.randn_like(x0)
        return x0 + _column(sigma, x0) * noise

    def network_inputs(self, x, sigma):
        """(c_in x, c_noise [B]): what F sees for x [B, ...] at noise levels sigma [B]."""
        sigma = _column(sigma, x)
        return self.c_in(sigma) * x, self.c_noise(sigma).reshape(-1)

    def denoise(self, model, x, sigma, model_kwargs=None):
        """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), in float32 at least (also when the
        network runs in fp16/bf16); sigma [B] or a scalar."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        x_in, c_noise = self.network_inputs(x, sigma)
        out = model(x_in, c_noise, **(model_kwargs or {})).to(dtype)
        s = _column(sigma, x)
        return self.c_skip(s) * x + self.c_out(s) * out

    # Training noise levels: ln sigma ~ N(p_mean, p_std^2).
    def sample_sigmas(self, batch_size: int, device="cpu", generator=None) -> torch.Tensor:
        """float32 [B] noise levels for training, drawn from the global RNG (or `generator`)."""
        z = torch.randn(batch_size, device=device, generator=generator)
        return (self.p_mean + self.p_std * z).exp()

    def sigma_at_quantile(self, u):
        """The noise level at quantile u in (0, 1) of the training distribution."""
        u = torch.as_tensor(u, dtype=torch.float64)
        return (self.p_mean + self.p_std * torch.special.ndtri(u)).exp()

    def quantile_of_sigma(self, sigma):
        """Where sigma lies in the training distribution: P(sigma' <= sigma), in [0, 1]."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return torch.special.ndtr((sigma.log() - self.p_mean) / self.p_std)

    def bucket_of_sigma(self, sigma, buckets: int) -> torch.Tensor:
        """int64 bucket index of each sigma among `buckets` equally likely ranges of the
        training distribution (0: the smallest noise levels)."""
        u = self.quantile_of_sigma(sigma.detach().cpu())
        return (u * buckets).long().clamp(0, buckets - 1)

    def sampling_sigmas(self, steps: int, spacing: str = "karras") -> list[float]:
        """The `steps` noise levels a sampler visits, largest first, then 0 (steps + 1 values).

        karras: sigma_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho
                (EDM eq. 5);
        logsnr: uniform in lambda = -ln sigma (Lu et al. 2022, DPM-Solver sec. 3.3).
        One step is sigma_max alone.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r} must be an integer >= 1.")
        if spacing not in SIGMA_GRIDS:
            raise ValueError(
                f"spacing={spacing!r} spaces integer timesteps; schedule=edm samples on a sigma "
                f"grid: {' or '.join(SIGMA_GRIDS)}."
            )
        hi, lo, n = self.sigma_max, self.sigma_min, steps - 1
        if n == 0:
            return [hi, 0.0]
        if spacing == "karras":
            a, b = hi ** (1 / self.rho), lo ** (1 / self.rho)
            sigmas = [(a + i / n * (b - a)) ** self.rho for i in range(steps)]
        else:
            sigmas = [
                math.exp(math.log(hi) + i / n * (math.log(lo) - math.log(hi))) for i in range(steps)
            ]
        return [*sigmas, 0.0]


class LogNormalSigmas:
    """The trainer's noise-level sampler for schedule=edm: ln sigma ~ N(p_mean, p_std^2), every
    example weighted 1; the interface of diffusion.timesteps' samplers, with sigma in place of t.
    Draws from the global RNG, which the trainer seeds per micro-batch: a resumed run draws the
    same sigmas."""

    name = "lognormal"
    needs_losses = False

    def __init__(self, diffusion: EDMDiffusion):
        self.diffusion = diffusion

    def sample(self, batch_size, device="cpu", generator=None):
        """(sigma float32 [B], weights float32 [B])."""
        sigma = self.diffusion.sample_sigmas(batch_size, device, generator)
        return sigma, torch.ones(batch_size, device=device)

    def update(self, t, losses) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass
