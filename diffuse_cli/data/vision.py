"""CIFAR-10 and MNIST from their usual on-disk formats under `root`.

torchvision downloads them (only when asked); CIFAR-10's pickled batches are read here rather
than through torchvision's class, which re-checks the MD5 of every file on each load.
"""

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataError, DiffuseDataset, check_split, to_unit_range

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
CIFAR10_META = "batches.meta"
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_CLASSES = tuple(str(d) for d in range(10))


class TensorImages(DiffuseDataset):
    """uint8 images [N, C, h, w] held in memory, resized to `image_size` and converted to
    `channels` (1 or 3) one item at a time, so memory stays at the stored size."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        class_names: tuple[str, ...],
        image_size: int,
        channels: int,
        num: int | None = None,
    ):
        if channels not in (1, 3):
            raise ValueError(f"images have 1 or 3 channels, not {channels}")
        self.images = images[:num]
        self.labels = labels[:num]
        self.class_names = class_names
        self.image_size = image_size
        self.channels = channels
        self.shape = (channels, image_size, image_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = to_unit_range(self.images[index])
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x[None],
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0].clamp_(-1.0, 1.0)
        if x.shape[0] == 1 and self.channels == 3:
            x = x.expand(3, -1, -1).contiguous()
        elif x.shape[0] == 3 and self.channels == 1:  # ITU-R 601 luma, as PIL's "L" mode
            x = torch.tensordot(torch.tensor([0.299, 0.587, 0.114]), x, dims=1)[None]
        return x, int(self.labels[index])


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(
            f"cannot read CIFAR-10 file {path} ({e}); delete it and download again"
        ) from e


def _download_cifar10(root: Path) -> None:
    import torchvision

    try:
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # network, disk or checksum failures all end the same way for a user
        raise DataError(f"could not download CIFAR-10 into {root}: {e}") from e


def cifar10(
    split: str,
    root: str | Path = "data",
    image_size: int = 32,
    channels: int = 3,
    num: int | None = None,
    download: bool = False,
) -> TensorImages:
    """CIFAR-10 (the python version) from `root`/cifar-10-batches-py; 10 labelled classes."""
    check_split(split)
    folder = Path(root) / CIFAR10_FOLDER
    needed = CIFAR10_FILES["train"] + CIFAR10_FILES["test"] + [CIFAR10_META]
    if download and not all((folder / name).is_file() for name in needed):
        _download_cifar10(Path(root))
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 not found: place the python-version files (data_batch_1..5, test_batch, "
            f"batches.meta) in {folder}/ or pass data.download=true"
        )
    batches = [_unpickle(folder / name) for name in CIFAR10_FILES[split]]
    try:
        data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([b["labels"] for b in batches])
        class_names = tuple(_unpickle(folder / CIFAR10_META)["label_names"])
    except (KeyError, ValueError) as e:
        raise DataError(f"the CIFAR-10 files in {folder} are not the python version ({e})") from e
    images = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
    return TensorImages(
        images, torch.from_numpy(labels.astype(np.int64)), class_names, image_size, channels, num
    )


def mnist(
    split: str,
    root: str | Path = "data",
    image_size: int = 32,
    channels: int = 1,
    num: int | None = None,
    download: bool = False,
) -> TensorImages:
    """MNIST from `root`/MNIST/raw (torchvision's layout), resized from 28x28 to image_size."""
    import torchvision

    check_split(split)
    raw = Path(root) / "MNIST" / "raw"
    needed = MNIST_FILES["train"] + MNIST_FILES["test"]
    if not download and not all((raw / name).is_file() for name in needed):
        raise DataError(
            f"MNIST not found: place {', '.join(needed)} (unzipped) in {raw}/ "
            f"or pass data.download=true"
        )
    try:
        ds = torchvision.datasets.MNIST(str(root), train=split == "train", download=download)
    except Exception as e:  # download failures and unreadable files alike
        raise DataError(f"could not load MNIST from {raw}: {e}") from e
    return TensorImages(
        ds.data[:, None].contiguous(), ds.targets.long(), MNIST_CLASSES, image_size, channels, num
    )
