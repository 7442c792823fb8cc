"""The exact denoiser and score of a 2-D Gaussian mixture: a "perfectly trained model" for tests.

For data x0 ~ sum_k w_k N(mu_k, Sigma_k), the noised data is again a mixture:

    VP (DDPM):  x_t = sqrt(a) x0 + sqrt(1 - a) eps   ~ sum_k w_k N(sqrt(a) mu_k, C_k),
                C_k = a Sigma_k + (1 - a) I,  a = abar_t
    VE (NCSN):  x = x0 + sigma z                     ~ sum_k w_k N(mu_k, Sigma_k + sigma^2 I)

so for every t (or sigma) the posterior responsibilities r_k(x) are known, and

    E[x0 | x_t] = sum_k r_k (mu_k + sqrt(a) Sigma_k C_k^-1 (x_t - sqrt(a) mu_k))
    E[eps | x_t] = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a) = -sqrt(1 - a) grad log p_t(x_t)
    E[v | x_t] = sqrt(a) E[eps | x_t] - sqrt(1 - a) E[x0 | x_t]

(each component is jointly Gaussian with x_t; Tweedie's formula for the score). Everything is
computed in float64.
"""

import math

import torch

# Four components with different weights, means inside [-1, 1]^2, small rotated anisotropic
# covariances: far enough apart that nearest-mean assignment is almost never wrong.
WEIGHTS = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
MEANS = torch.tensor([[-0.55, -0.45], [0.55, -0.4], [0.0, 0.6], [0.6, 0.55]], dtype=torch.float64)


def _rotated(std_major, std_minor, angle):
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return rot @ torch.diag(torch.tensor([std_major**2, std_minor**2], dtype=torch.float64)) @ rot.T


COVS = torch.stack(
    [
        _rotated(0.12, 0.05, 0.5),
        _rotated(0.10, 0.04, -0.8),
        _rotated(0.09, 0.06, 1.2),
        _rotated(0.07, 0.03, 0.0),
    ]
)


# Each named mixture's `spread`: "narrow" has component standard deviations 0.03 to 0.12 with
# means 0.6 to 1.5 apart; "broad" triples the deviations (0.09 to 0.36): overlapping components.
MIXTURES = {"narrow": 1.0, "broad": 3.0}


class MixtureOracle:
    """model(x_t, t) -> the exact E[eps | x_t] (or x0, or v) for the Gaussian mixture above.

    Args:
        alphas_cumprod: float64 [T] of the ORIGINAL diffusion; the oracle is called with original
            integer timesteps, like a trained network.
        prediction: "eps", "x0" or "v", what the oracle returns.
        record: keep every timesteps tensor it is called with in `self.calls`.
        spread: the components' standard deviations are multiplied by this (their covariances by
            its square), means and weights unchanged; MIXTURES names the two the tests use.
    """

    def __init__(self, alphas_cumprod=None, prediction="eps", record=False, spread=1.0):
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"unknown prediction {prediction!r}")
        self.alphas_cumprod = (
            None if alphas_cumprod is None else torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        )
        self.prediction = prediction
        self.record = record
        self.calls = []
        self.weights, self.means, self.covs = WEIGHTS, MEANS, spread**2 * COVS

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of x0 from the mixture, float32 [n, 2]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)[k]  # [n, 2, 2]
        return (self.means[k] + (chol @ z.unsqueeze(-1)).squeeze(-1)).float()

    def _posterior(self, x, scale, noise_var):
        """For x ~ sum_k w_k N(scale mu_k, scale^2 Sigma_k + noise_var I), per sample ([B] scale
        and noise_var): responsibilities [B, K] and C_k^-1 (x - scale mu_k) [B, K, 2]."""
        s = scale.reshape(-1, 1, 1, 1)
        cov = s**2 * self.covs + noise_var.reshape(-1, 1, 1, 1) * torch.eye(2, dtype=torch.float64)
        p, q, r = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]  # [B, K], symmetric 2 x 2
        det = p * r - q * q
        diff = x[:, None, :] - s[..., 0] * self.means  # [B, K, 2]
        u, v = diff[..., 0], diff[..., 1]
        solved = torch.stack([(r * u - q * v) / det, (p * v - q * u) / det], dim=-1)
        log_density = -0.5 * (diff * solved).sum(-1) - 0.5 * det.log()
        resp = torch.softmax(log_density + self.weights.log(), dim=1)
        return resp, solved

    def x0_eps(self, x_t: torch.Tensor, t: torch.Tensor):
        """(E[x0 | x_t], E[eps | x_t], abar_t [B, 1]) in float64, for original timesteps t."""
        a = self.alphas_cumprod[t.cpu()]
        x = x_t.detach().cpu().double()
        resp, solved = self._posterior(x, a.sqrt(), 1 - a)
        # E[x0 | x_t, k] = mu_k + sqrt(a) Sigma_k C_k^-1 (x_t - sqrt(a) mu_k)
        x0_k = self.means + a.sqrt().reshape(-1, 1, 1) * (self.covs @ solved.unsqueeze(-1)).squeeze(
            -1
        )
        x0 = (resp.unsqueeze(-1) * x0_k).sum(1)
        a = a.reshape(-1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return x0, eps, a

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        if self.record:
            self.calls.append(t.detach().cpu().clone())
        x0, eps, a = self.x0_eps(x_t, t)
        if self.prediction == "eps":
            out = eps
        elif self.prediction == "x0":
            out = x0
        else:
            out = a.sqrt() * eps - (1 - a).sqrt() * x0
        return out.to(device=x_t.device, dtype=x_t.dtype)

    def score_sigma(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad log p_sigma(x) for x = x0 + sigma z (NCSN's noising), x's dtype [B, 2]."""
        xd = x.detach().cpu().double()
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        resp, solved = self._posterior(xd, torch.ones_like(sigma), sigma**2)
        return (-(resp.unsqueeze(-1) * solved).sum(1)).to(x.dtype)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """The squared energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between the distributions
    of x [n, d] and y [m, d] (Szekely & Rizzo 2013), float64, unbiased (U-statistics: the zero
    diagonals of |X - X'| and |Y - Y'| are left out), so it scatters around 0 for equal
    distributions instead of sitting at a positive floor."""
    x, y = x.double(), y.double()
    n, m = len(x), len(y)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


def component_stats(x: torch.Tensor):
    """Assign each sample of x [n, 2] to the nearest mixture mean; return (weights [K],
    means [K, 2], covariances [K, 2, 2]) of the assigned groups, float64."""
    x = x.double()
    k = torch.cdist(x, MEANS).argmin(1)
    weights, means, covs = [], [], []
    for j in range(len(MEANS)):
        group = x[k == j]
        weights.append(len(group) / len(x))
        means.append(group.mean(0))
        covs.append(torch.cov(group.T))
    return torch.tensor(weights, dtype=torch.float64), torch.stack(means), torch.stack(covs)
