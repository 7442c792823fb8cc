"""CIFAR-10 and MNIST from their usual on-disk formats under `root`.

torchvision downloads them (only when asked); both are read here rather than through
torchvision's classes, which re-check the MD5 of every CIFAR-10 file on each load and give a
reshape error for a truncated MNIST file: each file's structure is checked, and a damaged one
is a DataError that names it.
"""

import math
import pickle
import struct
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


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same here
        raise DataError(
            f"cannot read CIFAR-10 file {path} ({e}); delete it and download again"
        ) from e


def _not_cifar10(path: Path, problem: str) -> DataError:
    return DataError(
        f"CIFAR-10 file {path} is not a python-version file ({problem}); delete it and "
        "download again"
    )


def read_cifar10_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 rows [N, 3072], int64 labels [N]) of one pickled batch, its structure checked so
    that a wrong file is one DataError naming it rather than a TypeError later."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or not {"data", "labels"} <= batch.keys():
        raise _not_cifar10(path, "not a dict with 'data' and 'labels'")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
        raise _not_cifar10(path, "its data are not uint8 rows of 3072 values")
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise _not_cifar10(path, f"its labels are not integers: {e}") from e
    if labels.shape != (len(data),):
        raise _not_cifar10(path, f"{labels.size} labels for {len(data)} images")
    if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
        raise _not_cifar10(path, f"labels outside 0..{num_classes - 1}")
    return data, labels


def read_cifar10_names(path: Path) -> tuple[str, ...]:
    """The class names of batches.meta, checked to be 10 strings."""
    meta = _unpickle(path)
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list | tuple) or len(names) != 10:
        raise _not_cifar10(path, "no list of 10 'label_names'")
    if not all(isinstance(name, str) for name in names):
        raise _not_cifar10(path, "its 'label_names' are not strings")
    return tuple(names)


def _download(dataset: str, name: str, root: Path) -> None:
    """torchvision.datasets.<dataset> into `root`; any failure is one DataError."""
    import torchvision

    try:
        getattr(torchvision.datasets, dataset)(str(root), train=True, download=True)
    except Exception as e:  # network, disk or checksum failures all end the same way for a user
        raise DataError(f"could not download {name} into {root}: {e}") from e


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
        _download("CIFAR10", "CIFAR-10", Path(root))
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        lacks = f": {folder}/ lacks {', '.join(missing)}" if len(missing) < len(needed) else ""
        raise DataError(
            f"CIFAR-10 not found{lacks}; place the python-version files "
            f"(data_batch_1..5, test_batch, batches.meta) in {folder}/ or pass "
            "data.download=true"
        )
    class_names = read_cifar10_names(folder / CIFAR10_META)
    batches = [read_cifar10_batch(folder / name, len(class_names)) for name in CIFAR10_FILES[split]]
    data = np.concatenate([data for data, _ in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([labels for _, labels in batches])
    return TensorImages(
        torch.from_numpy(np.ascontiguousarray(data)),
        torch.from_numpy(labels),
        class_names,
        image_size,
        channels,
        num,
    )


def _damaged_mnist(path: Path, problem: str) -> DataError:
    return DataError(
        f"MNIST file {path} is damaged ({problem}); delete it and download again "
        "(data.download=true)"
    )


def read_idx(path: Path, item_shape: tuple[int, ...]) -> np.ndarray:
    """An idx file of unsigned bytes (MNIST's format: a 4-byte magic number 0, 0, 0x08, ndim,
    then ndim big-endian sizes, then the bytes) as an array [N, *item_shape]; its header and
    size are checked against each other first, so a truncated or empty download is one
    DataError naming the file."""
    ndim = 1 + len(item_shape)
    header_size = 4 + 4 * ndim
    with open(path, "rb") as f:
        header = f.read(header_size)
    if len(header) < header_size:
        raise _damaged_mnist(path, f"{len(header)} bytes, shorter than an idx header")
    if header[:4] != bytes((0, 0, 0x08, ndim)):
        raise _damaged_mnist(path, f"not an idx file of {ndim}-D unsigned bytes")
    shape = struct.unpack(f">{ndim}I", header[4:])
    if shape[1:] != item_shape:
        raise _damaged_mnist(path, f"items of {shape[1:]}, not {item_shape}")
    declared = header_size + math.prod(shape)
    size = path.stat().st_size
    if size != declared:
        raise _damaged_mnist(path, f"{size} bytes where its header declares {declared}")
    return np.fromfile(path, dtype=np.uint8, offset=header_size).reshape(shape)


def mnist(
    split: str,
    root: str | Path = "data",
    image_size: int = 32,
    channels: int = 1,
    num: int | None = None,
    download: bool = False,
) -> TensorImages:
    """MNIST from `root`/MNIST/raw (torchvision's layout), resized from 28x28 to image_size
    (bilinear, antialiased; no padding)."""
    check_split(split)
    raw = Path(root) / "MNIST" / "raw"
    needed = MNIST_FILES["train"] + MNIST_FILES["test"]
    if download and not all((raw / name).is_file() for name in needed):
        _download("MNIST", "MNIST", Path(root))
    missing = [name for name in needed if not (raw / name).is_file()]
    if missing:
        raise DataError(
            f"MNIST not found: {raw}/ lacks {', '.join(missing)}; place {', '.join(needed)} "
            "(unzipped) there or pass data.download=true"
        )
    images_file, labels_file = (raw / name for name in MNIST_FILES[split])
    images, labels = read_idx(images_file, (28, 28)), read_idx(labels_file, ())
    if len(images) != len(labels):
        raise DataError(
            f"MNIST files {images_file} and {labels_file} disagree ({len(images)} images, "
            f"{len(labels)} labels); delete them and download again (data.download=true)"
        )
    if labels.size and labels.max() >= len(MNIST_CLASSES):
        raise _damaged_mnist(labels_file, f"labels outside 0..{len(MNIST_CLASSES) - 1}")
    return TensorImages(
        torch.from_numpy(images)[:, None].contiguous(),
        torch.from_numpy(labels.astype(np.int64)),
        MNIST_CLASSES,
        image_size,
        channels,
        num,
    )
