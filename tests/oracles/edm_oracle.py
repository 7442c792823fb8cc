"""Exact models for the EDM formulation (x = x0 + sigma n): optimal denoisers D*(x; sigma) =
E[x0 | x] of known data, and the network F that the preconditioning turns into them.

    Gaussian N(mu, s^2 I):  D* = mu + s^2 / (s^2 + sigma^2) (x - mu)
    a mixture:              D* = x + sigma^2 grad log p_sigma(x)            (Tweedie's formula)
    classes y ~ U{K}, x0 | y ~ N(mu_y, s^2 I):
                            D*(x | y) = mu_y + s^2 / (s^2 + sigma^2) (x - mu_y)
                            p(y | x) = softmax_y(-|x - mu_y|^2 / (2 (s^2 + sigma^2)))
                            D*(x) = sum_y p(y | x) D*(x | y)

Everything is computed in float64.
"""

import torch


class DenoiserNetwork:
    """F(c_in x, c_noise, y) = (D(x, sigma, y) - c_skip x) / c_out for an exact denoiser D, so that
    edm.denoise(F, x, sigma) returns D: a "perfectly trained" network of an EDM run.

    Args:
        edm: the EDMDiffusion whose preconditioning F is inverted through.
        denoiser: D(x float64 [B, ...], sigma float64 [B, 1, ...], y or None) -> like x.
        num_classes: set for a class-conditional oracle (label num_classes is the null label).
    """

    def __init__(self, edm, denoiser, num_classes=None):
        self.edm, self.denoiser, self.num_classes = edm, denoiser, num_classes
        self.calls = 0

    def __call__(self, x_in, c_noise, y=None):
        self.calls += 1
        e = self.edm
        sigma = e.sigma_of_noise_label(c_noise.double()).reshape(-1, *[1] * (x_in.dim() - 1))
        x = x_in.double() / e.c_in(sigma)
        d = self.denoiser(x, sigma, y)
        return ((d - e.c_skip(sigma) * x) / e.c_out(sigma)).to(x_in.dtype)


def gaussian_denoiser(mu, s):
    """D* of N(mu, s^2 I)."""

    def denoise(x, sigma, y=None):
        return mu + s**2 / (s**2 + sigma**2) * (x - mu)

    return denoise


def mixture_denoiser(oracle):
    """D* of tests/oracles/mixture_oracle.py's mixture, from its exact score of x0 + sigma z."""

    def denoise(x, sigma, y=None):
        s = sigma.reshape(-1)
        return x + sigma**2 * oracle.score_sigma(x, s).double()

    return denoise


class ClassGaussiansSigma:
    """Class-conditional Gaussians in sigma space: the exact conditional and unconditional
    denoisers (label K = the null label) and the exact noisy classifier, on the EDM network's
    inputs (c_in x, c_noise) like a trained classifier of an EDM run."""

    def __init__(self, edm, means, std):
        self.edm = edm
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.std = float(std)
        self.num_classes = self.means.shape[0]

    def _log_posterior(self, x, sigma):
        v = self.std**2 + sigma.reshape(-1, 1) ** 2  # [B, 1]
        centred = x[:, None, :] - self.means  # [B, K, D]
        return torch.log_softmax(-(centred**2).sum(-1) / (2 * v), dim=-1)

    def denoise(self, x, sigma, y=None):
        shrink = self.std**2 / (self.std**2 + sigma[:, None] ** 2)  # [B, 1, 1]
        per_class = self.means + shrink * (x[:, None, :] - self.means)  # [B, K, D]
        mixture = (self._log_posterior(x, sigma).exp()[..., None] * per_class).sum(1)
        if y is None:
            return mixture
        chosen = per_class[torch.arange(len(y)), y.clamp(max=self.num_classes - 1)]
        return torch.where((y == self.num_classes)[:, None], mixture, chosen)

    def network(self):
        return DenoiserNetwork(self.edm, self.denoise, num_classes=self.num_classes)

    def classifier(self, x_in, c_noise):
        """log p(y | x) for x = x_in / c_in, differentiable in x_in: [B, K]."""
        sigma = self.edm.sigma_of_noise_label(c_noise.double()).reshape(-1, 1)
        return self._log_posterior(x_in.double() / self.edm.c_in(sigma), sigma)
