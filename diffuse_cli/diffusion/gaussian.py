"""Gaussian diffusion: forward process, posterior, reverse step from a model output, and loss.

Notation follows Ho et al. 2020 ("DDPM"): betas beta_t, alphas alpha_t = 1 - beta_t,
alphas_cumprod abar_t = prod_{s<=t} alpha_s, and

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)                       (Ho eq. 4)
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,  eps ~ N(0, I)

Timesteps `t` are always int64 tensors [B] indexing this diffusion's tables (0..T-1). The model
itself is always called with `timestep_map[t]`, the original training timesteps, so a respaced
diffusion (see respace.py) drives the same network. Tables are float64 tensors [T]; they are
gathered per sample and cast to the data's dtype, so any data shape (B, ...) works.

What the network's output means is chosen once, from config, as two small objects:
    prediction: eps | x0 | v       -> how the output becomes (x0, eps), and the training target
    variance:   fixed_small | fixed_large | learned | learned_range -> which part of the output
                is the mean part, and the log variance of p(x_{t-1} | x_t)
The learned variances (Nichol & Dhariwal 2021, sec. 3.1) read the second half of the output
channels (dim 1); nothing else here depends on which variance is used.

The terms of the variational bound (Ho et al. 2020, eq. 5) are here too: `vlb_terms` gives
L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the decoder term
L_0 = -log p(x_0 | x_1) at t = 0, and `prior_bpd` the prior term L_T, all in bits per dimension.
The losses built from them live in losses.py.
"""

import torch

from .likelihood import bits_per_dim, discretized_gaussian_log_likelihood, normal_kl


def gather(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample values table[t], shaped [B, 1, ..., 1] to broadcast against x.

    Args:
        table: float64 tensor [T] on any device.
        t: int64 tensor [B] of indices into the table.
        x: tensor [B, ...]; gives the dtype (float32 if x is not floating) and the number of dims.

    Returns:
        tensor [B] + [1] * (x.dim() - 1) on t's device, in x's floating dtype.
    """
    dtype = x.dtype if x.is_floating_point() else torch.float32
    # Cast before moving: some devices (MPS) have no float64.
    values = table.to(dtype).to(t.device)[t]
    return values.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: [B, ...] -> [B]."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


# --- what the network predicts ---------------------------------------------------------------


class Prediction:
    """How a network's (mean) output relates to x0 and eps. Stateless; one subclass per choice."""

    name = ""

    def to_x0_eps(self, diffusion, out, x_t, t):
        """Model output [B, ...] -> (x0, eps), both [B, ...]."""
        raise NotImplementedError

    def target(self, diffusion, x0, eps, t):
        """The regression target for L_simple given the clean data x0 and the noise eps."""
        raise NotImplementedError


class EpsPrediction(Prediction):
    """The network predicts the noise eps (Ho et al. 2020, eq. 11-12)."""

    name = "eps"

    def to_x0_eps(self, diffusion, out, x_t, t):
        return diffusion.predict_x0_from_eps(x_t, t, out), out

    def target(self, diffusion, x0, eps, t):
        return eps


class X0Prediction(Prediction):
    """The network predicts the clean data x0 directly (Ho et al. 2020, sec. 3.2 alternative)."""

    name = "x0"

    def to_x0_eps(self, diffusion, out, x_t, t):
        return out, diffusion.predict_eps_from_x0(x_t, t, out)

    def target(self, diffusion, x0, eps, t):
        return x0


class VPrediction(Prediction):
    """The network predicts v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4)."""

    name = "v"

    def to_x0_eps(self, diffusion, out, x_t, t):
        return diffusion.x0_eps_from_v(x_t, t, out)

    def target(self, diffusion, x0, eps, t):
        return diffusion.v_from_x0_eps(x0, eps, t)


PREDICTIONS = {cls.name: cls for cls in (EpsPrediction, X0Prediction, VPrediction)}


# --- the variance of p(x_{t-1} | x_t) --------------------------------------------------------


class Variance:
    """Splits a model output into its mean part and the log variance of p(x_{t-1} | x_t).

    `channel_factor` is how many output channels the network needs per data channel (1 for a
    fixed variance, 2 for a learned one whose second half of dim 1 parameterizes the variance).
    """

    name = ""
    channel_factor = 1

    def split(self, diffusion, out, t):
        """Model output -> (mean_part [B, ...], log_variance broadcastable to mean_part)."""
        raise NotImplementedError


class FixedVariance(Variance):
    """A variance that depends on t only (Ho et al. 2020, sec. 3.2); the whole output is mean."""

    def log_variance_table(self, diffusion) -> torch.Tensor:
        """float64 tensor [T] of log sigma_t^2."""
        raise NotImplementedError

    def split(self, diffusion, out, t):
        log_variance = gather(self.log_variance_table(diffusion), t, out)
        return out, log_variance.expand_as(out)


class FixedSmall(FixedVariance):
    """sigma_t^2 = beta~_t, the posterior variance (Ho eq. 7); the log is clipped at t = 0 where
    beta~_0 = 0, using beta~_1 there (as improved-diffusion does)."""

    name = "fixed_small"

    def log_variance_table(self, diffusion):
        return diffusion.posterior_log_variance_clipped


class FixedLarge(FixedVariance):
    """sigma_t^2 = beta_t (Ho et al. 2020, sec. 3.2), with beta~_1 at t = 0 so that the decoder
    variance at the last step is not the (tiny) beta_1 (as improved-diffusion does)."""

    name = "fixed_large"

    def log_variance_table(self, diffusion):
        first = diffusion.posterior_variance_floor.reshape(1)
        return torch.log(torch.cat([first, diffusion.betas[1:]]))


class LearnedVariance(Variance):
    """The network outputs log Sigma_t directly as the second half of its channels (Nichol &
    Dhariwal 2021, sec. 3.1, the parameterization they found unstable, kept for comparison)."""

    name = "learned"
    channel_factor = 2

    def split(self, diffusion, out, t):
        mean_part, log_variance = out.chunk(2, dim=1)
        return mean_part, log_variance


class LearnedRangeVariance(Variance):
    """The network outputs v in the second half of its channels and Sigma_t interpolates between
    the two fixed choices in the log domain (Nichol & Dhariwal 2021, eq. 15):

        log Sigma_t = frac log beta_t + (1 - frac) log beta~_t,   frac = (v + 1) / 2

    with log beta~_t clipped at t = 0 (beta~_0 = 0). The endpoints come from `diffusion`'s own
    tables, so a respaced diffusion interpolates its respaced betas and posterior variances.
    v is not clamped: values outside [-1, 1] extrapolate, as in improved-diffusion.
    """

    name = "learned_range"
    channel_factor = 2

    def split(self, diffusion, out, t):
        mean_part, v = out.chunk(2, dim=1)
        min_log = gather(diffusion.posterior_log_variance_clipped, t, v)
        max_log = gather(torch.log(diffusion.betas), t, v)
        frac = (v + 1) / 2
        return mean_part, frac * max_log + (1 - frac) * min_log


VARIANCES = {
    cls.name: cls for cls in (FixedSmall, FixedLarge, LearnedVariance, LearnedRangeVariance)
}


def _choose(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(
            f"Unknown {kind} {name!r}; valid choices are: {', '.join(sorted(registry))}."
        )
    return registry[name]()


# --- the diffusion ---------------------------------------------------------------------------


class GaussianDiffusion:
    """All tables and formulas of a Gaussian diffusion with T steps.

    Args:
        betas: float64 tensor [T] with values in (0, 1) (see schedules.py).
        prediction: "eps", "x0" or "v" (PREDICTIONS), what the network's mean output means.
        variance: "fixed_small", "fixed_large", "learned" or "learned_range" (VARIANCES).
        timestep_map: int64 tensor [T]; index i of this diffusion -> the timestep the model is
            given. Defaults to arange(T); respace() sets it to the original timesteps.
    """

    def __init__(self, betas, prediction="eps", variance="fixed_small", timestep_map=None):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.dim() != 1 or betas.numel() < 1:
            shape = tuple(betas.shape)
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {shape}.")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must all lie in the open interval (0, 1).")
        self.num_timesteps = T = betas.shape[0]
        if timestep_map is None:
            timestep_map = torch.arange(T)
        self.timestep_map = torch.as_tensor(timestep_map, dtype=torch.int64).cpu()
        if self.timestep_map.shape != (T,):
            shape = tuple(self.timestep_map.shape)
            raise ValueError(f"timestep_map must have shape ({T},), got {shape}.")
        self.prediction = _choose(PREDICTIONS, "prediction", prediction)
        self.variance = _choose(VARIANCES, "variance type", variance)
        self._set_tables(betas)

    def _set_tables(self, betas):
        """Derive every float64 table [T] from the betas (Ho et al. 2020, eq. 4 and 6-7)."""
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], zero])
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta~_t I)          (Ho eq. 6-7)
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        self.posterior_mean_coef1 = betas * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * self.alphas.sqrt() / (1.0 - abar)
        # beta~_0 = 0, so its log is replaced by log beta~_1 (beta_0 if T == 1).
        floor = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_variance_floor = floor
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([floor.reshape(1), self.posterior_variance[1:]])
        )

    def __repr__(self):
        return (
            f"GaussianDiffusion(T={self.num_timesteps}, prediction={self.prediction.name!r}, "
            f"variance={self.variance.name!r})"
        )

    # --- forward process ---------------------------------------------------------------------

    def q_mean_variance(self, x0, t):
        """q(x_t | x_0) (Ho eq. 4). Takes x0 [B, ...], t [B]; returns (mean, var, log_var),
        each [B, ...]."""
        mean = gather(self.sqrt_alphas_cumprod, t, x0) * x0
        var = gather(1.0 - self.alphas_cumprod, t, x0).expand_as(x0)
        log_var = gather(torch.log1p(-self.alphas_cumprod), t, x0).expand_as(x0)
        return mean, var, log_var

    def q_sample(self, x0, t, noise=None):
        """Draw x_t ~ q(x_t | x_0) = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (Ho eq. 4).

        Takes x0 [B, ...], t [B] and optionally the noise [B, ...] (drawn if None); returns x_t.
        """
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x_0) (Ho eq. 6-7). Returns (mean, var, log_var_clipped), [B, ...]."""
        mean = (
            gather(self.posterior_mean_coef1, t, x_t) * x0
            + gather(self.posterior_mean_coef2, t, x_t) * x_t
        )
        var = gather(self.posterior_variance, t, x_t).expand_as(x_t)
        log_var = gather(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, log_var

    # --- conversions between x_t, x0, eps and v (all [B, ...]) -------------------------------

    def predict_x0_from_eps(self, x_t, t, eps):
        """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), Ho eq. 4 solved for x0."""
        return (
            gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t, t, x0):
        """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar), Ho eq. 4 solved for eps."""
        return (gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / gather(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def v_from_x0_eps(self, x0, eps, t):
        """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4)."""
        return (
            gather(self.sqrt_alphas_cumprod, t, x0) * eps
            - gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def x0_eps_from_v(self, x_t, t, v):
        """(x0, eps) from v: x0 = sqrt(abar) x_t - sqrt(1 - abar) v,
        eps = sqrt(abar) v + sqrt(1 - abar) x_t (Salimans & Ho 2022, sec. 4 and app. D)."""
        a = gather(self.sqrt_alphas_cumprod, t, x_t)
        b = gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return a * x_t - b * v, a * v + b * x_t

    def model_output_to_x0_eps(self, out, x_t, t):
        """The (mean part of a) model output [B, ...] -> (x0, eps) per the prediction type."""
        return self.prediction.to_x0_eps(self, out, x_t, t)

    # --- reverse process ---------------------------------------------------------------------

    def model_timesteps(self, t):
        """The timesteps the model sees for indices t [B]: the original ones, timestep_map[t]."""
        return self.timestep_map.to(t.device)[t]

    def p_mean_variance(self, model, x_t, t, clip_denoised=True, model_kwargs=None):
        """p(x_{t-1} | x_t) from one model call (Ho et al. 2020, sec. 3.2, eq. 1 and 6-7).

        The model output is split by the variance object into a mean part and a log variance;
        the mean part becomes (x0, eps) via the prediction object, and the mean is the posterior
        mean q(x_{t-1} | x_t, x0) at the predicted x0.

        Args:
            model: callable model(x_t, timesteps, **model_kwargs) -> output; timesteps are the
                original int64 timesteps timestep_map[t].
            x_t: tensor [B, ...]; t: int64 tensor [B] of indices into this diffusion.
            clip_denoised: clip the predicted x0 to [-1, 1]; eps is then recomputed from the
                clipped x0, so that (x0, eps) stay consistent with x_t (DDIM relies on this).
            model_kwargs: extra keyword arguments for the model (e.g. class labels y).

        Returns:
            dict of [B, ...] tensors: "mean", "variance", "log_variance", "pred_x0", "pred_eps".
        """
        out = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        mean_part, log_variance = self.variance.split(self, out, t)
        return self.p_from_parts(mean_part, log_variance, x_t, t, clip_denoised)

    def p_from_parts(self, mean_part, log_variance, x_t, t, clip_denoised=True):
        """p(x_{t-1} | x_t) from an already split model output (see p_mean_variance).

        Args:
            mean_part: [B, ...], what the prediction object reads; log_variance: broadcastable.
            x_t: [B, ...]; t: int64 [B]; clip_denoised: as in p_mean_variance.

        Returns:
            the dict of p_mean_variance.
        """
        x0, eps = self.model_output_to_x0_eps(mean_part, x_t, t)
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.predict_eps_from_x0(x_t, t, x0)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_x0": x0,
            "pred_eps": eps,
        }

    # --- the variational bound ---------------------------------------------------------------

    def vlb_terms(self, x0, x_t, t, mean, log_variance):
        """The term of the variational bound at each example's t, in bits/dim (Ho et al. 2020,
        eq. 5; Nichol & Dhariwal 2021, sec. 3.1):

            t > 0:  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || N(mean, exp(log_variance)))
            t = 0:  L_0 = -log p(x_0 | x_1), the Gaussian N(mean, exp(log_variance))
                    discretized into the 256 bins of 8-bit data (likelihood.py)

        Args:
            x0: data on the 8-bit grid of [-1, 1], [B, ...]; x_t: [B, ...]; t: int64 [B].
            mean, log_variance: p(x_{t-1} | x_t) as given by p_mean_variance / p_from_parts.

        Returns:
            float [B], bits per dimension.
        """
        true_mean, _, true_log_variance = self.q_posterior(x0, x_t, t)
        terms = bits_per_dim(normal_kl(true_mean, true_log_variance, mean, log_variance))
        if bool((t == 0).any()):  # the decoder costs more than the KL: only where it is needed
            log_scale = 0.5 * log_variance.expand_as(x0)
            decoder = -bits_per_dim(discretized_gaussian_log_likelihood(x0, mean, log_scale))
            terms = torch.where(t == 0, decoder, terms)
        return terms

    def prior_bpd(self, x0):
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim [B]; no parameters, and near 0 for any
        schedule whose alphas_cumprod[T - 1] is near 0 (Ho et al. 2020, eq. 5)."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, dtype=torch.int64, device=x0.device)
        mean, _, log_variance = self.q_mean_variance(x0, t)
        return bits_per_dim(
            normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))
        )

    # --- training ----------------------------------------------------------------------------

    def mse_term(self, x0, noise, t, mean_part):
        """(target - mean_part)^2 averaged over non-batch dims [B], in float32 (or x0's dtype if
        wider), the target given by the prediction type (Ho et al. 2020, eq. 14)."""
        target = self.prediction.target(self, x0, noise, t)
        dtype = torch.promote_types(x0.dtype, torch.float32)
        return mean_flat((target.to(dtype) - mean_part.to(dtype)) ** 2)

    def training_losses(self, model, x0, t, noise=None, model_kwargs=None):
        """L_simple (Ho et al. 2020, eq. 14), with the target chosen by the prediction type; a
        learned variance takes no part in it. losses.py has the other losses.

        Args:
            model: as in p_mean_variance.
            x0: clean data [B, ...]; t: int64 indices [B]; noise: [B, ...] or None (drawn).

        Returns:
            {"loss": [B], "mse": [B]}: the mean over non-batch dims of (target - output)^2,
            in float32 (or x0's dtype if wider).
        """
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        mean_part, _ = self.variance.split(self, out, t)
        mse = self.mse_term(x0, noise, t, mean_part)
        return {"loss": mse, "mse": mse}
