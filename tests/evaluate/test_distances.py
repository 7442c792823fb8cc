"""The formulas behind the eval numbers, on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffuse_cli.evaluate.distances import (
    energy_distance,
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_distance,
    precision_recall,
    sliced_wasserstein,
)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def closed_form_fd(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), by symmetric square roots:
    another route to the trace than the one the implementation takes."""
    r1 = _sqrtm_psd(s1)
    cross = _sqrtm_psd(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross))


def random_cov(rng, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def stats(mu, sigma) -> dict:
    return {"mu": np.asarray(mu, dtype=np.float64), "sigma": np.asarray(sigma, dtype=np.float64)}


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    # N(0, diag(1, 4)) and N((3, 4), diag(4, 1)): 25 + (1 + 4 - 4) + (4 + 1 - 4) = 27
    fd = frechet_distance(stats([0, 0], np.diag([1, 4])), stats([3, 4], np.diag([4, 1])))
    assert fd == pytest.approx(27.0, rel=1e-10)


def test_frechet_distance_of_full_covariances_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = random_cov(rng, 6), random_cov(rng, 6)
    expected = closed_form_fd(mu1, s1, mu2, s2)
    assert frechet_distance(stats(mu1, s1), stats(mu2, s2)) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_from_samples_approaches_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, -1.0])
    s1, s2 = random_cov(rng, 3), random_cov(rng, 3)
    a = torch.from_numpy(rng.multivariate_normal(mu1, s1, size=200_000))
    b = torch.from_numpy(rng.multivariate_normal(mu2, s2, size=200_000))
    fd = frechet_distance(feature_statistics(a), feature_statistics(b))
    assert fd == pytest.approx(closed_form_fd(mu1, s1, mu2, s2), rel=0.02)


def test_frechet_distance_is_zero_for_the_same_set_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 16, generator=g)
    b = torch.randn(500, 16, generator=g) * 1.5 + 0.3
    sa, sb = feature_statistics(a), feature_statistics(b)
    assert frechet_distance(sa, sa) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(sa, sb) == pytest.approx(frechet_distance(sb, sa), rel=1e-9)
    assert frechet_distance(sa, sb) > 1.0


def test_kernel_distance_is_unbiased_on_identical_distributions():
    """The unbiased MMD^2 averages to 0 for two samples of one distribution (a biased one
    would stay above 0), so independent repeats fall on both sides of 0."""
    means = []
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
        means.append(kernel_distance(a, b, subsets=20, subset_size=200, seed=seed)["mean"])
    means = np.array(means)
    assert (means < 0).any() and (means > 0).any()
    assert abs(means.mean()) < 3 * means.std() / np.sqrt(len(means))
    # and a shifted distribution is far away in the same units
    g = torch.Generator().manual_seed(99)
    a, b = torch.randn(2000, 8, generator=g), torch.randn(300, 8, generator=g) + 0.5
    shifted = kernel_distance(a, b, subsets=10)
    assert shifted["mean"] > 20 * np.abs(means).max() and shifted["subset_size"] == 300


def test_inception_score_is_one_for_constant_predictions():
    logits = torch.tensor([[2.0, -1.0, 0.5]]).repeat(100, 1)
    assert inception_score(logits)["mean"] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_is_the_class_count_for_uniform_confident_predictions():
    k = 5
    confident = 50.0 * torch.eye(k).repeat(20, 1)  # 100 one-hot predictions, 20 per class
    assert inception_score(confident, splits=1)["mean"] == pytest.approx(k, rel=1e-9)
    many = 50.0 * torch.eye(k).repeat(4000, 1)  # shuffled into 10 nearly balanced splits
    assert inception_score(many)["mean"] == pytest.approx(k, rel=5e-3)


def test_precision_recall_on_constructed_point_clouds():
    grid = torch.stack(torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij"), -1)
    left = grid.reshape(-1, 2)  # 100 points, spacing 1
    right = left + torch.tensor([100.0, 0.0])
    real = torch.cat([left, right])
    same = precision_recall(real, real)
    assert same == {"precision": 1.0, "recall": 1.0}
    half = precision_recall(left + 0.1, real)  # only one of the two real modes
    assert half["precision"] == 1.0 and half["recall"] == pytest.approx(0.5)
    far = precision_recall(left + 1000.0, real)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_sliced_wasserstein_on_point_clouds():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g)
    shift = torch.tensor([3.0, 4.0])
    assert sliced_wasserstein(x, x) == 0.0
    # shifting by c moves every projection by theta.c: E (theta.c)^2 = |c|^2 / 2 in 2-D
    assert sliced_wasserstein(x, x + shift, projections=2000) == pytest.approx(
        5 / np.sqrt(2), rel=0.03
    )
    y = torch.randn(700, 2, generator=g) * 2
    assert sliced_wasserstein(x, y) == pytest.approx(sliced_wasserstein(y, x), rel=1e-12)


def test_energy_distance_on_point_clouds():
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    assert energy_distance(a, b) == pytest.approx(2 * 5.0)  # point masses: 2 |a - b|
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 2, generator=g), torch.randn(200, 2, generator=g) + 1
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)
    assert energy_distance(x, y) > 0.1
