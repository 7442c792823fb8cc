"""Noise-conditional score models (Song & Ermon 2019, "Generative Modeling by Estimating Gradients
of the Data Distribution", NCSN): L noise levels and the score a network's output stands for.

An NCSN perturbs the data with Gaussian noise of one of L levels, a geometric sequence

    sigma_1 > sigma_2 > ... > sigma_L,   sigma_i / sigma_{i+1} constant          (NCSN sec. 4.2)

    x = x0 + sigma_i z,  z ~ N(0, I)        (no scaling of x0: a "variance exploding" process)

and trains s_theta(x, i) ~ grad_x log p_{sigma_i}(x) by denoising score matching (losses.py,
`dsm`). Level i is the network's integer "timestep" (index 0 is sigma_1, the largest, as in the
paper and in samplers.annealed_langevin), so the UNet and MLP serve unchanged, conditioned on the
level index as NCSN's network is.

What the output means is chosen once (config group `prediction`):

    score:  s = out                     NCSN 2019: the network outputs the score itself
    eps:    s = -out / sigma_i          the network predicts the noise z; dividing its output by
                                        sigma is NCSNv2's technique 3 (Song & Ermon 2020), up to
                                        the sign, and makes the sigma^2-weighted DSM loss the
                                        plain MSE on z
    x0:     s = (out - x) / sigma_i^2   a denoiser D(x) = E[x0 | x]; Tweedie's formula

This module is pure torch and, like gaussian.py, holds no nn.Module.
"""

import math

import torch

from .gaussian import gather

NOISE_LEVEL_SCHEDULES = ("ncsn",)


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> torch.Tensor:
    """The L noise levels of NCSN: sigma_max = sigma_1 > ... > sigma_L = sigma_min, a geometric
    sequence (equal ratios, NCSN sec. 4.2: sigma_1 = 1, sigma_10 = 0.01 for images in [0, 1]).

    Returns:
        float64 tensor [L], decreasing.

    Raises:
        ValueError: sigma_min <= 0, sigma_min > sigma_max, L < 1, or L = 1 with two levels.
    """
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"the number of noise levels must be an integer >= 1, got {num_levels!r}.")
    if not 0.0 < sigma_min <= sigma_max:
        raise ValueError(
            f"the ncsn schedule needs 0 < sigma_min <= sigma_max, got sigma_min={sigma_min} "
            f"and sigma_max={sigma_max}."
        )
    if num_levels == 1:
        if sigma_min != sigma_max:
            raise ValueError("one noise level needs sigma_min == sigma_max.")
        return torch.tensor([float(sigma_max)], dtype=torch.float64)
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_levels, dtype=torch.float64)
    return logs.exp()


class ScorePrediction:
    """How a network output becomes the score s(x, sigma); stateless, one subclass per choice."""

    name = ""

    def to_score(self, out, x, sigma):
        """out, x [B, ...]; sigma broadcastable [B, 1, ...] -> the score, like x."""
        raise NotImplementedError


class RawScore(ScorePrediction):
    """s = out (NCSN 2019, sec. 4.1)."""

    name = "score"

    def to_score(self, out, x, sigma):
        return out


class NoiseScore(ScorePrediction):
    """s = -out / sigma: out estimates z in x = x0 + sigma z (NCSNv2, sec. 3.3, technique 3)."""

    name = "eps"

    def to_score(self, out, x, sigma):
        return -out / sigma


class DenoiserScore(ScorePrediction):
    """s = (out - x) / sigma^2: out estimates E[x0 | x] (Tweedie's formula)."""

    name = "x0"

    def to_score(self, out, x, sigma):
        return (out - x) / sigma**2


SCORE_PREDICTIONS = {cls.name: cls for cls in (RawScore, NoiseScore, DenoiserScore)}


class NoiseLevels:
    """The noise levels of an NCSN and the score its network stands for; the score-model
    counterpart of GaussianDiffusion, with the same `num_timesteps`, `model_timesteps` and
    `q_sample` so that the trainer, the timestep samplers and the eval loss take either.

    Args:
        sigmas: the levels, decreasing, float64 [L] (geometric_sigmas).
        prediction: "score", "eps" or "x0" (SCORE_PREDICTIONS), what the network outputs.
    """

    def __init__(self, sigmas, prediction: str = "score"):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
        if sigmas.dim() != 1 or sigmas.numel() < 1 or not bool((sigmas > 0).all()):
            raise ValueError("sigmas must be a non-empty 1-D tensor of positive levels.")
        if not bool((sigmas[1:] < sigmas[:-1]).all()):
            raise ValueError("sigmas must decrease: sigma_1 (index 0) is the largest level.")
        if prediction not in SCORE_PREDICTIONS:
            choices = ", ".join(sorted(SCORE_PREDICTIONS))
            raise ValueError(
                f"prediction={prediction!r} has no meaning for a score model; choose: {choices}."
            )
        self.sigmas = sigmas
        self.num_timesteps = len(sigmas)
        self.timestep_map = torch.arange(len(sigmas))
        self.prediction = SCORE_PREDICTIONS[prediction]()

    def __repr__(self):
        lo, hi = float(self.sigmas[-1]), float(self.sigmas[0])
        return (
            f"NoiseLevels(L={self.num_timesteps}, sigma {hi:g} -> {lo:g}, "
            f"prediction={self.prediction.name!r})"
        )

    def model_timesteps(self, i):
        """The network is conditioned on the level index itself."""
        return i

    def q_sample(self, x0, i, noise=None):
        """x = x0 + sigma_i noise for level indices i [B] (NCSN sec. 4.2)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return x0 + gather(self.sigmas, i, x0) * noise

    def score(self, model, x, i, model_kwargs=None):
        """One network call: the score estimate s(x, sigma_i), like x, for level indices i [B]."""
        out = model(x, self.model_timesteps(i), **(model_kwargs or {}))
        return self.prediction.to_score(out, x, gather(self.sigmas, i, x))
