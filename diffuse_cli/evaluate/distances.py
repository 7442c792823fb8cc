"""Distances between a generated set and a reference set, from features or raw points.

Feature-space numbers come from torch-fidelity (a well-kept implementation that follows the
reference code of each paper), so our numbers are comparable with published ones when the
features are:

    frechet_distance    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))    Heusel et al. 2017
    kernel_distance     unbiased MMD^2, cubic polynomial kernel, subsets    Binkowski et al. 2018
    inception_score     exp E_x KL(p(y|x) || p(y)), over splits             Salimans et al. 2016
    precision_recall    k-NN manifold estimates, k = 3                      Kynkaanniemi et al. 2019

For 2-D data, where raw points are the features, two distances written here (torch-fidelity
has none for point clouds):

    sliced_wasserstein  (E_theta W_2^2(theta#P, theta#Q))^(1/2)              Bonneel et al. 2015
    energy_distance     2 E|X - Y| - E|X - X'| - E|Y - Y'|                  Szekely & Rizzo 2013
"""

from __future__ import annotations

import numpy as np
import torch


def feature_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """{"mu": [D], "sigma": [D, D]} in float64: the Gaussian fitted to the features [N, D]."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.detach().cpu().double())


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """The Frechet distance between the Gaussians N(mu1, S1) and N(mu2, S2) (float64)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID]


def kernel_distance(
    features_1: torch.Tensor,
    features_2: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> dict[str, float]:
    """{"mean", "std", "subset_size"}: the unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3 over
    `subsets` random subsets of min(subset_size, N1, N2) rows of each set."""
    from torch_fidelity.metric_kid import (
        KEY_METRIC_KID_MEAN,
        KEY_METRIC_KID_STD,
        kid_features_to_metric,
    )

    size = min(subset_size, len(features_1), len(features_2))
    out = kid_features_to_metric(
        features_1.detach().cpu(),
        features_2.detach().cpu(),
        kid_subsets=subsets,
        kid_subset_size=size,
        rng_seed=seed,
        verbose=False,
    )
    return {"mean": out[KEY_METRIC_KID_MEAN], "std": out[KEY_METRIC_KID_STD], "subset_size": size}


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 2020) -> dict[str, float]:
    """{"mean", "std"} of exp(E_x KL(p(y|x) || p(y))) over `splits` shuffled splits of the
    class logits [N, K]: 1 when every prediction is the same, K when the predictions are
    confident and spread evenly over the K classes."""
    from torch_fidelity.metric_isc import (
        KEY_METRIC_ISC_MEAN,
        KEY_METRIC_ISC_STD,
        isc_features_to_metric,
    )

    splits = max(1, min(splits, len(logits)))
    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, rng_seed=seed)
    return {"mean": out[KEY_METRIC_ISC_MEAN], "std": out[KEY_METRIC_ISC_STD], "splits": splits}


def precision_recall(
    generated: torch.Tensor, real: torch.Tensor, neighborhood: int = 3
) -> dict[str, float]:
    """{"precision", "recall"}: the share of generated points inside the real manifold (the
    union of balls reaching each real point's k-th nearest real neighbour), and the share of
    real points inside the generated manifold."""
    from torch_fidelity.metric_prc import (
        KEY_METRIC_PRECISION,
        KEY_METRIC_RECALL,
        prc_features_to_metric,
    )

    out = prc_features_to_metric(
        generated.detach().cpu().float(),
        real.detach().cpu().float(),
        prc_neighborhood=neighborhood,
        save_cpu_ram=True,  # chunked distances: the same numbers without an N x N matrix
        verbose=False,
    )
    return {"precision": out[KEY_METRIC_PRECISION], "recall": out[KEY_METRIC_RECALL]}


def sliced_wasserstein(
    x: torch.Tensor, y: torch.Tensor, projections: int = 1000, seed: int = 0
) -> float:
    """The sliced 2-Wasserstein distance between point clouds x [N, D] and y [M, D].

    On each of `projections` random unit directions theta, W_2 between the projected 1-D
    empirical distributions is the L2 distance of their quantile functions, here compared at
    max(N, M) evenly spaced levels (exact for N = M: sorted points against sorted points).
    """
    g = torch.Generator().manual_seed(seed)
    x, y = x.detach().cpu().double(), y.detach().cpu().double()
    theta = torch.randn(x.shape[1], projections, generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=0, keepdim=True)
    px, _ = (x @ theta).sort(0)
    py, _ = (y @ theta).sort(0)
    n = max(len(px), len(py))
    levels = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    qx = px[(levels * len(px)).long()]
    qy = py[(levels * len(py)).long()]
    return float((qx - qy).pow(2).mean().sqrt())


def _mean_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> float:
    total = sum(float(torch.cdist(part, b).sum()) for part in a.split(chunk))
    return total / (len(a) * len(b))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """The energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between the empirical
    distributions of x [N, D] and y [M, D] (the V-statistic: >= 0, and 0 only for the same
    points), in float64, by chunks so N x M distances are never held at once."""
    x, y = x.detach().cpu().double(), y.detach().cpu().double()
    return 2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)
