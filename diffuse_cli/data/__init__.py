"""Datasets by name. Every item is (x float32 in [-1, 1], label int): x is CHW for images and
shape (2,) for 2-D toy data. Datasets never augment; the trainer flips batches itself with
`random_hflip` so augmentation follows its generator."""

from .base import SPLITS, DataError, DiffuseDataset
from .image_folder import ImageFolder
from .registry import DATASETS, build_dataset
from .shapes import Shapes
from .toy2d import TOY_SETS, Toy2D
from .transforms import random_hflip
from .vision import TensorImages, cifar10, mnist

__all__ = [
    "DATASETS",
    "SPLITS",
    "TOY_SETS",
    "DataError",
    "DiffuseDataset",
    "ImageFolder",
    "Shapes",
    "TensorImages",
    "Toy2D",
    "build_dataset",
    "cifar10",
    "mnist",
    "random_hflip",
]
