"""Power-function EMA profiles and their least-squares combination (Karras et al. 2024,
"Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 3 and appendix C).

A power-function EMA at time t averages the weights of times tau in [0, t] with the profile
p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) (eq. 3); its width relative to t is
sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (eq. 4). Pure math on numbers:
no files, no networks.
"""

from __future__ import annotations

import math

import numpy as np

# sigma_rel at gamma = 0, the plain average of all weights so far: the widest profile whose
# weights do not rise towards tau = 0 (smaller gamma in (-1, 0) would favour the early weights).
MAX_STD = 1.0 / math.sqrt(12.0)


def std_of_gamma(gamma: float) -> float:
    """sigma_rel of the power profile with exponent gamma (EDM2 eq. 4)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of_std(std: float) -> float:
    """The exponent gamma >= 0 whose profile has relative width `std` in (0, MAX_STD].

    sigma_rel(gamma) falls monotonically on [0, inf) from MAX_STD towards 0 (like 1/gamma), so
    a bisection in log(1 + gamma) finds the root of the cubic to float64 precision; the cubic's
    closed form loses digits for small std, where gamma ~ 1/std^2 is large.
    """
    if not 0.0 < std <= MAX_STD:
        raise ValueError(f"sigma_rel={std} must be in (0, {MAX_STD:.4f}]")
    lo, hi = 0.0, math.log1p(2.0 / std**2 + 8.0)  # std_of_gamma(e^hi - 1) < std
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if std_of_gamma(math.expm1(mid)) > std:
            lo = mid
        else:
            hi = mid
    return math.expm1(0.5 * (lo + hi))


def power_beta(step: int, gamma: float) -> float:
    """beta_t = (1 - 1/t)^(gamma + 1) (EDM2 eq. 5): the decay of the update at optimizer step
    t >= 1, after which the EMA is the profile-weighted average of the weights of steps 1..t."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


def step_weights(step: int, gamma: float) -> np.ndarray:
    """The weight of each step's weights 1..t in the power EMA at step t: the updates with
    power_beta telescope to (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1), the integral of
    the profile over (tau - 1, tau]."""
    tau = np.arange(1, step + 1, dtype=np.float64)
    return ((tau / step) ** (gamma + 1) - ((tau - 1) / step) ** (gamma + 1)).astype(np.float64)


def profile_inner(t_a, gamma_a, t_b, gamma_b):
    """<p_a, p_b> = integral over tau of p_a(tau) p_b(tau), in closed form (EDM2 app. C.3):
    both are zero past their own t, so the integral of tau^(gamma_a + gamma_b) runs to
    min(t_a, t_b). Numbers or numpy arrays (broadcast)."""
    t_a, gamma_a, t_b, gamma_b = (
        np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b)
    )
    g = gamma_a + gamma_b + 1.0
    # in logs: t^(gamma + 1) overflows float64 for the large gamma of a short EMA
    log = (
        np.log(gamma_a + 1)
        + np.log(gamma_b + 1)
        - np.log(g)
        + g * np.log(np.minimum(t_a, t_b))
        - (gamma_a + 1) * np.log(t_a)
        - (gamma_b + 1) * np.log(t_b)
    )
    return np.exp(log)


def combination(
    stored: list[tuple[int, float]], target: tuple[int, float]
) -> tuple[np.ndarray, float]:
    """Coefficients x of the stored profiles (step, sigma_rel) whose sum best matches the
    target profile in L2 (EDM2 app. C.3: the normal equations A x = b with A_ij = <p_i, p_j>,
    b_i = <p_i, p_target>), and the fit's relative L2 error ||sum x_i p_i - p|| / ||p||."""
    t = np.array([float(step) for step, _ in stored])
    gamma = np.array([gamma_of_std(s) for _, s in stored])
    t_r, g_r = float(target[0]), gamma_of_std(target[1])
    gram = profile_inner(t[:, None], gamma[:, None], t[None, :], gamma[None, :])
    rhs = profile_inner(t, gamma, t_r, g_r)
    x = np.linalg.lstsq(gram, rhs, rcond=None)[0]  # near-equal profiles make A near singular
    target_norm = float(profile_inner(t_r, g_r, t_r, g_r))
    residual = max(target_norm - 2.0 * x @ rhs + x @ gram @ x, 0.0)
    return x, math.sqrt(residual / target_norm)
