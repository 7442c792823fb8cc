"""The exact optimal denoiser for Gaussian data, a "perfectly trained model" for tests.

For data x0 ~ N(mu, diag(std^2)) and x_t = sqrt(a) x0 + sqrt(1 - a) eps with a = abar_t,
x_t ~ N(sqrt(a) mu, a std^2 + 1 - a) per dimension, and the minimum-MSE predictors are

    E[x0  | x_t] = mu + sqrt(a) std^2 / (a std^2 + 1 - a) * (x_t - sqrt(a) mu)
    E[eps | x_t] =      sqrt(1 - a)   / (a std^2 + 1 - a) * (x_t - sqrt(a) mu)
    E[v   | x_t] = sqrt(a) E[eps | x_t] - sqrt(1 - a) E[x0 | x_t]

(jointly Gaussian conditioning). A sampler driven by this model must reproduce the data's mean
and variance, up to its own discretization error.
"""

import torch


class GaussianOracle:
    """model(x_t, t) -> the exact E[eps | x_t] (or x0, or v) for Gaussian data.

    Args:
        mu, std: tensors of one sample's shape (or broadcastable to it): the data's mean and
            standard deviation per dimension.
        alphas_cumprod: float64 [T] of the ORIGINAL diffusion; the oracle is called with the
            original timesteps, exactly like a trained network.
        prediction: "eps", "x0" or "v", what the oracle returns.
        record: keep every timesteps tensor it is called with in `self.calls`.
    """

    def __init__(self, mu, std, alphas_cumprod, prediction="eps", record=False):
        self.mu = torch.as_tensor(mu, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"unknown prediction {prediction!r}")
        self.prediction = prediction
        self.record = record
        self.calls = []

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of x0 ~ N(mu, diag(std^2)), float32 [n, *mu.shape]."""
        shape = (n, *torch.broadcast_shapes(self.mu.shape, self.std.shape))
        z = torch.randn(shape, generator=generator, dtype=torch.float64)
        return (self.mu + self.std * z).float()

    def x0_eps(self, x_t: torch.Tensor, t: torch.Tensor):
        """(E[x0 | x_t], E[eps | x_t]) in float64, both x_t's shape [B, ...]."""
        a = self.alphas_cumprod[t.cpu()].reshape(-1, *([1] * (x_t.dim() - 1)))
        x = x_t.detach().cpu().double()
        var_xt = a * self.std**2 + 1 - a
        centred = x - a.sqrt() * self.mu
        x0 = self.mu + a.sqrt() * self.std**2 / var_xt * centred
        eps = (1 - a).sqrt() / var_xt * centred
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


def reverse_moments(
    oracle: GaussianOracle,
    sub,
    sampler="ddpm",
    variance="fixed_small",
    eta=0.0,
    corrector_steps=0,
    snr=0.16,
):
    """Exact mean and variance (float64, per dimension) of a sampler's output when driven by the
    oracle from x_T ~ N(0, I), without clipping.

    With the oracle every step is affine per dimension, x_prev = A x + b + sigma z, so the
    moments follow by the recursion m <- A m + b, v <- A^2 v + sigma^2. The coefficients are
    written here from the papers' formulas, independently of the samplers' code:
        ddpm: mean = c1 x0 + c2 x_t (Ho eq. 7), sigma^2 = beta~ (fixed_small) or beta (fixed_large)
        ddim: x_prev = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z (Song eq. 12),
              sigma^2 = eta^2 (1 - a') / (1 - a) (1 - a / a')
    where x0 = mu + k0 (x - sqrt(a) mu), eps = ke (x - sqrt(a) mu) are the oracle's predictors.
    With corrector_steps > 0 each step but the last is followed by that many Langevin steps at
    the step's target a' (predictor-corrector, Song et al. 2021 "Score-Based Generative
    Modeling through SDEs", Algorithm 5, with the step size e = 2 (a' / a'') snr^2 (1 - a') of
    samplers.pc, a'' the kept abar before a', 1 at the first):
        x + e s + sqrt(2 e) z,  s = -eps / sqrt(1 - a')                   (Song eq. 12 / Tweedie)

    Args:
        sub: the (respaced) GaussianDiffusion the sampler walks; only its alphas_cumprod and
            timestep_map are used.

    Returns:
        (mean, var), float64 tensors of one sample's shape.
    """
    mu, s2 = oracle.mu, oracle.std**2
    m = torch.zeros_like(mu * s2)
    v = torch.ones_like(m)
    abars = sub.alphas_cumprod
    for i in range(len(abars) - 1, -1, -1):
        a = abars[i]
        a_prev = abars[i - 1] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        a_model = oracle.alphas_cumprod[sub.timestep_map[i]]
        k0 = a_model.sqrt() * s2 / (a_model * s2 + 1 - a_model)
        ke = (1 - a_model).sqrt() / (a_model * s2 + 1 - a_model)
        shift = a_model.sqrt() * mu  # x0 = mu + k0 (x - shift), eps = ke (x - shift)
        if sampler == "ddpm":
            beta = 1 - a / a_prev
            c1, c2 = beta * a_prev.sqrt() / (1 - a), (1 - a_prev) * (1 - beta).sqrt() / (1 - a)
            A, b = c1 * k0 + c2, c1 * (mu - k0 * shift)
            small = beta * (1 - a_prev) / (1 - a)
            sigma2 = small if variance == "fixed_small" else beta
        else:
            sigma2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
            e = (1 - a_prev - sigma2).sqrt()
            A = a_prev.sqrt() * k0 + e * ke
            b = a_prev.sqrt() * (mu - k0 * shift) - e * ke * shift
        m, v = A * m + b, A**2 * v + (sigma2 if i > 0 else 0.0)
        if i > 0 and corrector_steps:
            a_c = abars[i - 1]
            step = 2 * a_c / (abars[i - 2] if i > 1 else 1.0) * snr**2 * (1 - a_c)
            a_model = oracle.alphas_cumprod[sub.timestep_map[i - 1]]
            ke = (1 - a_model).sqrt() / (a_model * s2 + 1 - a_model)
            pull = step * ke / (1 - a_c).sqrt()  # x + e s = (1 - pull) x + pull sqrt(a) mu
            for _ in range(corrector_steps):
                m = (1 - pull) * m + pull * a_model.sqrt() * mu
                v = (1 - pull) ** 2 * v + 2 * step
    return m, v


class BasisNoise:
    """A noise source for exact moments: row 2 + k gets z = 1 at the k-th draw, all else 0."""

    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.draws = 0

    def randn(self, shape_per_sample, dtype=torch.float32):
        raise AssertionError("samplers take x_T from the caller")

    def randn_like(self, x):
        z = torch.zeros_like(x)
        z[2 + self.draws] = 1.0
        self.draws += 1
        return z


def moments_by_linearity(run, mean, std, max_draws, dtype=torch.float64):
    """Exact mean and variance of run(x, noise) for x ~ N(mean, diag(std^2)) and standard normal
    noise, for a `run` that is affine in x and in the noise it draws (every sampler step driven
    by the exact model of Gaussian data is). Row 0 starts at the mean with no noise (the output
    mean), row 1 at mean + std (the part of the variance that comes from x), row 2 + k at the
    mean with unit noise at draw k only; the variance is the sum of the squared deviations.

    Args:
        run: run(x [2 + max_draws, ...], noise source) -> output like x.
        mean, std: tensors of one sample's shape.
        max_draws: at least the number of noise draws run makes (unused rows add 0).

    Returns:
        (mean, var, draws): float64 tensors of one sample's shape, and the draws made.
    """
    mean = torch.as_tensor(mean, dtype=dtype)
    rows = mean.expand(2 + max_draws, *mean.shape).clone()
    rows[1] += torch.as_tensor(std, dtype=dtype)
    noise = BasisNoise(len(rows))
    out = run(rows, noise).double()
    return out[0], ((out[1:] - out[0]) ** 2).sum(dim=0), noise.draws


class WithVariance:
    """A model with a learned variance built from a mean-only model: its output is
    [model(x_t, t), variance_part(x_t, t)] along dim 1, as variance=learned / learned_range read.

    Args:
        model: callable (x_t, t) -> mean part, e.g. a GaussianOracle.
        variance_part: callable (x_t, t) -> a tensor like x_t (log Sigma, or v), or a float
            for a constant v.
    """

    def __init__(self, model, variance_part):
        self.model = model
        self.variance_part = variance_part

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        mean_part = self.model(x_t, t, **model_kwargs)
        if callable(self.variance_part):
            extra = self.variance_part(x_t, t).to(mean_part.dtype)
        else:
            extra = torch.full_like(mean_part, float(self.variance_part))
        return torch.cat([mean_part, extra], dim=1)


def optimal_log_variance(oracle: GaussianOracle, diffusion):
    """(x_t, t) -> log Var[x_{t-1} | x_t] for the oracle's Gaussian data: the variance of the true
    reverse step, beta~_t + coef1_t^2 Var[x0 | x_t] (q(x_{t-1} | x_t, x0) averaged over
    q(x0 | x_t); coef1 of Ho eq. 7). With this variance and the oracle's mean, p(x_{t-1} | x_t)
    is the exact reverse of the forward process, so the bound's KL terms are tight. For an
    unrespaced `diffusion` (t indexes its tables and the oracle's alike)."""

    def fn(x_t, t):
        shape = (-1, *([1] * (x_t.dim() - 1)))
        a = oracle.alphas_cumprod[t.cpu()].reshape(shape)
        var_x0 = oracle.std**2 * (1 - a) / (a * oracle.std**2 + 1 - a)
        c1 = diffusion.posterior_mean_coef1[t.cpu()].reshape(shape)
        var = diffusion.posterior_variance[t.cpu()].reshape(shape) + c1**2 * var_x0
        return torch.log(var).expand(x_t.shape).to(x_t.device)

    return fn
