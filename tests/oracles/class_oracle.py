"""Exact models for class-conditional Gaussian data, for testing guidance without training.

Data: y uniform over K classes, x0 | y ~ N(mu_y, s^2 I). With x_t = sqrt(a) x0 + sqrt(1 - a) eps
(a = abar_t), x_t | y ~ N(sqrt(a) mu_y, v I) with v = a s^2 + 1 - a, so in closed form:

    E[eps | x_t, y] = sqrt(1 - a) (x_t - sqrt(a) mu_y) / v
    p(y | x_t)      = softmax_y( -|x_t - sqrt(a) mu_y|^2 / (2 v) )
    E[eps | x_t]    = sum_y p(y | x_t) E[eps | x_t, y]
    grad log p(y | x_t) = -(x_t - sqrt(a) mu_y) / v + sum_k p(k | x_t) (x_t - sqrt(a) mu_k) / v
"""

import torch


class ClassGaussians:
    """model(x_t, t, y) -> the exact E[eps | x_t, y] (or x0 / v) as a trained class-conditional
    network with a null label would give: label K (the null label) gives E[eps | x_t].

    Args:
        means: [K, D] class means; std: the per-class standard deviation s.
        alphas_cumprod: float64 [T] of the original diffusion (called with original timesteps).
        prediction: "eps", "x0" or "v".
    """

    def __init__(self, means, std, alphas_cumprod, prediction="eps"):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.std = float(std)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.prediction = prediction
        self.num_classes = self.means.shape[0]

    def _terms(self, x_t, t):
        a = self.alphas_cumprod[t.cpu()].to(x_t.device)[:, None, None]  # [B, 1, 1]
        v = a * self.std**2 + 1 - a
        centred = x_t.double()[:, None, :] - a.sqrt() * self.means.to(x_t.device)  # [B, K, D]
        return a[:, 0], v[:, 0], centred

    def log_posterior(self, x_t, t):
        """log p(y | x_t) for every y: [B, K], float64, differentiable in x_t."""
        _, v, centred = self._terms(x_t, t)
        return torch.log_softmax(-(centred**2).sum(-1) / (2 * v), dim=-1)

    def grad_log_posterior(self, x_t, t, y):
        """grad_x log p(y | x_t) in closed form (no autograd): [B, D] float64."""
        _, v, centred = self._terms(x_t, t)
        w = self.log_posterior(x_t, t).exp()[:, :, None]
        mine = centred[torch.arange(len(y)), y]
        return (-mine + (w * centred).sum(1)) / v

    def eps(self, x_t, t, y):
        a, v, centred = self._terms(x_t, t)
        per_class = (1 - a).sqrt()[:, :, None] * centred / v[:, :, None]  # [B, K, D]
        w = self.log_posterior(x_t, t).exp()[:, :, None]
        mixture = (w * per_class).sum(1)
        chosen = per_class[torch.arange(len(y)), y.clamp(max=self.num_classes - 1)]
        return torch.where((y == self.num_classes)[:, None], mixture, chosen), a

    def __call__(self, x_t, t, y):
        eps, a = self.eps(x_t, t, y)
        x0 = (x_t.double() - (1 - a).sqrt() * eps) / a.sqrt()
        out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[self.prediction]
        return out.to(x_t.dtype)

    def classifier(self, x_t, t):
        """Exact logits of p(y | x_t) (a noisy classifier), differentiable."""
        return self.log_posterior(x_t, t)


class Unconditional:
    """The same oracle as an unconditional network: model(x_t, t) = E[eps | x_t]."""

    num_classes = None

    def __init__(self, oracle: ClassGaussians):
        self.oracle = oracle

    def __call__(self, x_t, t):
        return self.oracle(x_t, t, torch.full_like(t, self.oracle.num_classes))


class OneClass:
    """The oracle of class y alone as an unconditional network (exact for N(mu_y, s^2 I))."""

    num_classes = None

    def __init__(self, oracle: ClassGaussians, y: int):
        self.oracle, self.y = oracle, y

    def __call__(self, x_t, t):
        return self.oracle(x_t, t, torch.full_like(t, self.y))
