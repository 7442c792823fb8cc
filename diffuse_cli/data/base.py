"""What every dataset shares: the user-facing error type, split names and the metadata the
trainer reads to size a model."""

import torch
from torch.utils.data import Dataset

SPLITS = ("train", "test")


class DataError(Exception):
    """A problem with the user's data (missing files, unreadable image). Its message is one
    sentence that the CLI prints as is."""


def check_split(split: str) -> int:
    """Return the split's index (0 train, 1 test), which also seeds generated data so the two
    splits are disjoint streams."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    return SPLITS.index(split)


class DiffuseDataset(Dataset):
    """A dataset of (x float32 in [-1, 1], label int) pairs with metadata.

    Subclasses set `class_names` (one name per label; a single name for unlabelled data, whose
    label is always 0) and `shape` (the shape of one x, e.g. (3, 32, 32) or (2,)).
    """

    class_names: tuple[str, ...] = ("unlabelled",)
    shape: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def evenly_spaced(count: int, num: int | None) -> list[int]:
    """Indices of `num` of `count` items spread evenly over them (floor(i * count / num)), so a
    cap on a folder sorted by class keeps every class in proportion; all when `num` is None or
    not below `count`."""
    if num is None or num >= count:
        return list(range(count))
    return [i * count // num for i in range(num)]
