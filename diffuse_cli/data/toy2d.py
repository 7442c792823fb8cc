"""2-D toy distributions for quick experiments with the MLP. Each is deterministic from
(seed, split) and scaled to lie (almost all) within [-1, 1], like images, so samplers that clip
x0 to [-1, 1] do not distort them."""

import math
from collections.abc import Callable

import numpy as np
import torch

from .base import DiffuseDataset, check_split


def moons(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles (as scikit-learn's make_moons, noise 0.05); label = moon."""
    labels = rng.integers(2, size=n)
    theta = rng.uniform(0.0, math.pi, size=n)
    upper = np.stack([np.cos(theta), np.sin(theta)], 1)
    lower = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], 1)
    x = np.where(labels[:, None] == 0, upper, lower) + rng.normal(0.0, 0.05, size=(n, 2))
    return (x - [0.5, 0.25]) / [1.6, 1.6], labels  # x in about [-1, 2.0] -> [-0.95, 0.95]


def eight_gaussians(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mixture of 8 Gaussians on a circle of radius 0.8; label = component index."""
    labels = rng.integers(8, size=n)
    angle = labels * (2.0 * math.pi / 8)
    centres = 0.8 * np.stack([np.cos(angle), np.sin(angle)], 1)
    return centres + rng.normal(0.0, 0.05, size=(n, 2)), labels


def swiss_roll(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D Swiss roll (scikit-learn's make_swiss_roll projected on its x-z plane)."""
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.uniform(size=n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.normal(0.0, 0.25, size=(n, 2))
    return x / 14.5, np.zeros(n, dtype=np.int64)  # radius t <= 4.5 pi ~ 14.1


def checkerboard(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform on the dark squares of a 4x4 checkerboard over [-1, 1]^2."""
    col = rng.integers(4, size=n)
    row = 2 * rng.integers(2, size=n) + col % 2  # (row + col) even: the dark squares
    x = (np.stack([col, row], 1) + rng.uniform(size=(n, 2))) / 2.0 - 1.0
    return x, np.zeros(n, dtype=np.int64)


TOY_SETS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "moons": (moons, ("upper", "lower")),
    "eight_gaussians": (eight_gaussians, tuple(f"component_{k}" for k in range(8))),
    "swiss_roll": (swiss_roll, ("unlabelled",)),
    "checkerboard": (checkerboard, ("unlabelled",)),
}


class Toy2D(DiffuseDataset):
    """`num` points of a named 2-D distribution, generated at construction (they are tiny)."""

    shape = (2,)

    def __init__(self, name: str, split: str = "train", num: int = 10000, seed: int = 0):
        if name not in TOY_SETS:
            raise ValueError(f"unknown 2-D dataset {name!r}; valid choices: {', '.join(TOY_SETS)}")
        sample, self.class_names = TOY_SETS[name]
        self.name = name
        rng = np.random.default_rng([seed, check_split(split)])
        points, labels = sample(rng, num)
        self.points = torch.as_tensor(points, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.points[index], int(self.labels[index])
