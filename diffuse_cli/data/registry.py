"""Dataset names -> builders. Every builder takes the same keyword arguments, so the API can
pass a data config through unchanged and each builder uses the ones it needs."""

from collections.abc import Callable
from pathlib import Path

from .base import DataError, DiffuseDataset, check_split
from .image_folder import ImageFolder
from .shapes import Shapes
from .toy2d import TOY_SETS, Toy2D
from .vision import cifar10, mnist

# Sizes of the generated datasets when num_train / num_test are not given.
GENERATED_SIZES = {"train": 10000, "test": 1000}


def _num(split: str, num_train: int | None, num_test: int | None) -> int | None:
    return num_train if split == "train" else num_test


def check_seed(seed: int) -> None:
    """Generated data are seeded by (data.seed, split, ...), which numpy takes only >= 0."""
    if seed < 0:
        raise DataError(f"data.seed={seed} must be >= 0")


def _shapes(split, *, image_size, channels, num_train, num_test, seed, **_) -> DiffuseDataset:
    check_seed(seed)
    num = _num(split, num_train, num_test) or GENERATED_SIZES[split]
    return Shapes(split, num, image_size, channels, seed)


def _toy(name: str) -> Callable[..., DiffuseDataset]:
    def build(split, *, num_train, num_test, seed, **_) -> DiffuseDataset:
        check_seed(seed)
        return Toy2D(name, split, _num(split, num_train, num_test) or GENERATED_SIZES[split], seed)

    return build


def _cifar10(split, *, root, image_size, channels, num_train, num_test, download, **_):
    return cifar10(split, root, image_size, channels, _num(split, num_train, num_test), download)


def _mnist(split, *, root, image_size, channels, num_train, num_test, download, **_):
    return mnist(split, root, image_size, channels, _num(split, num_train, num_test), download)


def _image_folder(split, *, root, image_size, channels, num_train, num_test, subset, **_):
    num = _num(split, num_train, num_test)
    return ImageFolder(root, split, image_size, channels, num, subset)


DATASETS: dict[str, Callable[..., DiffuseDataset]] = {
    "shapes": _shapes,
    **{name: _toy(name) for name in TOY_SETS},
    "cifar10": _cifar10,
    "mnist": _mnist,
    "image_folder": _image_folder,
}


def build_dataset(
    name: str,
    split: str,
    *,
    root: str | Path = "data",
    image_size: int = 32,
    channels: int = 3,
    num_train: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    download: bool = False,
    subset: str = "evenly_spaced",
) -> DiffuseDataset:
    """The dataset `name` for `split` ("train" or "test"): items are (x float32 in [-1, 1],
    label int), with `num_classes`, `class_names` and `shape` attributes.

    `num_train` / `num_test` set the size of generated datasets (default 10000 / 1000) and cap
    the size of file-backed ones (default: all). `seed` only affects generated data; `root` and
    `download` only file-backed data; the 2-D toy sets ignore `image_size` and `channels`
    (a config's are checked by build.data_shape).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(sorted(DATASETS))}")
    check_split(split)
    return DATASETS[name](
        split,
        root=root,
        image_size=image_size,
        channels=channels,
        num_train=num_train,
        num_test=num_test,
        seed=seed,
        download=download,
        subset=subset,
    )
