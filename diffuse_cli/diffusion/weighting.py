"""Per-timestep weights on L_simple (`loss.weighting`), in the prediction's own space.

A scheme is a weight w(SNR) on the x0 error ||x0_hat - x0||^2, SNR_t = abar_t / (1 - abar_t).
For one x_t the three predictions' errors are proportional (x_t = sqrt(abar) x0 + sqrt(1 - abar)
eps fixes eps and v given x0):

    ||eps_hat - eps||^2 = SNR ||x0_hat - x0||^2,    ||v_hat - v||^2 = (SNR + 1) ||x0_hat - x0||^2

so the weight on a prediction's own MSE is w / SNR (eps), w / (SNR + 1) (v) or w (x0), and the
three weighted losses are one objective on x0: the prediction changes the network's output
scale, not what is optimized.

    uniform   1 on the prediction's own MSE: L_simple as it is (Ho et al. 2020, eq. 14)
    min_snr   w = min(SNR, gamma) (Hang et al. 2023, Min-SNR-gamma): high-SNR steps, whose
              x0 error is small and easy, stop dominating the gradient
    edm       w = lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 with
              sigma^2 = 1 / SNR (Karras et al. 2022, Table 1), which is SNR + 1 / sigma_data^2;
              sigma_data = 0.5, EDM's for data in [-1, 1]
"""

from __future__ import annotations

from functools import partial

import torch

from .gaussian import gather

SIGMA_DATA = 0.5  # EDM's standard deviation of data scaled to [-1, 1]

# ||prediction error||^2 / ||x0 error||^2 at a given SNR (see above)
X0_ERROR_SCALE = {
    "eps": lambda snr: snr,
    "x0": torch.ones_like,
    "v": lambda snr: snr + 1,
}


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR_t = abar_t / (1 - abar_t), the same shape and dtype (Kingma et al. 2021, eq. 2)."""
    return alphas_cumprod / (1 - alphas_cumprod)


def min_snr(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) on the x0 error (Hang et al. 2023)."""
    return snr.clamp(max=gamma)


def edm(snr: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the x0 error
    (Karras et al. 2022, Table 1), sigma^2 = 1 / SNR: that is SNR + 1 / sigma_data^2."""
    return snr + 1 / sigma_data**2


WEIGHTINGS = ("uniform", "min_snr", "edm")


class LossWeighting:
    """weights(diffusion, t, like) -> [B]: the weight of each example's L_simple term.

    Args:
        name: "min_snr" or "edm" (get_weighting returns None for "uniform").
        snr_gamma: gamma of min_snr.
    """

    def __init__(self, name: str, snr_gamma: float = 5.0):
        self.name = name
        self.snr_gamma = snr_gamma
        self.x0_weight = {"min_snr": partial(min_snr, gamma=snr_gamma), "edm": edm}[name]

    def __repr__(self):
        gamma = f", snr_gamma={self.snr_gamma}" if self.name == "min_snr" else ""
        return f"LossWeighting({self.name!r}{gamma})"

    def table(self, diffusion) -> torch.Tensor:
        """float64 [T]: the weight on the MSE of `diffusion`'s prediction type at each t."""
        s = snr(diffusion.alphas_cumprod)
        return self.x0_weight(s) / X0_ERROR_SCALE[diffusion.prediction.name](s)

    def __call__(self, diffusion, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[B] weights at timesteps t, in like's floating dtype, on t's device."""
        return gather(self.table(diffusion), t, like).reshape(-1)


def get_weighting(name: str, snr_gamma: float = 5.0) -> LossWeighting | None:
    """The weighting called `name`, None for uniform (the loss is left exactly as it is).
    ValueError names the choices or says what gamma must be."""
    if name not in WEIGHTINGS:
        raise ValueError(
            f"Unknown loss weighting {name!r}; valid choices are: {', '.join(WEIGHTINGS)}."
        )
    if name == "min_snr" and not snr_gamma > 0:
        raise ValueError(f"snr_gamma={snr_gamma} must be > 0")
    return None if name == "uniform" else LossWeighting(name, snr_gamma)
