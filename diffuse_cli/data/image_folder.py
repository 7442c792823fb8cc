"""`image_folder`: any folder of images, e.g. a user's own photos.

Images are found recursively, following symlinked folders, skipping hidden files and folders
(".ipynb_checkpoints") and the "__MACOSX" folders of zip archives. If the images sit in
sub-folders, the top-level sub-folder names (sorted) are the classes; images directly in the
folder get the class ".". With train/ and test/ splits the classes are train/'s, so a label means
the same class in both. Every image is converted to RGB (or L), its shorter side resized to
`image_size` and its centre cropped. A cap (`data.num_train`, `data.num_test`) keeps evenly
spaced files, so each class keeps its share.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .base import DataError, DiffuseDataset, check_split, evenly_spaced, to_unit_range

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})
LOOSE_CLASS = "."  # class of images directly in the root folder


SUBSETS = ("evenly_spaced", "first")  # which files a cap keeps (data.subset)


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def find_images(folder: Path) -> list[Path]:
    """All image files under `folder`, recursively, in a stable (sorted) order; hidden ones and
    archive metadata (which often carry image extensions) left out. Symlinked folders are
    followed (a class folder is often a link to a bigger disk), except a link back into its
    own ancestors, which would loop; dangling links are left out."""
    found = []
    ancestors = {str(folder): frozenset({os.path.realpath(folder)})}  # real paths, per folder
    for path, subfolders, names in os.walk(folder, followlinks=True):
        above = ancestors.pop(path)
        kept = []
        for name in subfolders:
            real = os.path.realpath(os.path.join(path, name))
            if not _hidden(name) and real not in above:
                ancestors[os.path.join(path, name)] = above | {real}
                kept.append(name)
        subfolders[:] = kept  # os.walk descends into these only
        found += (
            Path(path, name)
            for name in names
            if not _hidden(name)
            and Path(name).suffix.lower() in EXTENSIONS
            and Path(path, name).is_file()
        )
    return sorted(found)


def classes_of(folder: Path, files: list[Path]) -> list[str]:
    """The class of each file: its top-level sub-folder under `folder`, or LOOSE_CLASS."""
    return [
        p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else LOOSE_CLASS
        for p in files
    ]


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode to RGB or L. Transparent pixels are composited on white (their
    colour is often arbitrary), and 16-bit greyscale is scaled rather than clipped to 255."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return image.convert(mode)


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic, with PIL's antialiasing) and crop the centre."""
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """Read one file as uint8 [H, W, C]; DataError naming the file if it cannot be decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image)
                image = _to_mode(image, "L" if channels == 1 else "RGB")
                image = resize_center_crop(image, image_size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    array = np.array(image)  # a writable copy, which torch.from_numpy wants
    return array[:, :, None] if array.ndim == 2 else array


class ImageFolder(DiffuseDataset):
    """Images under `root`; if `root` has a `train` sub-folder, the splits are `root`/train and
    `root`/test, otherwise both splits read all of `root` (e.g. to compare samples with the
    training images). `num` keeps that many images of the files sorted by path: evenly spaced
    over them (so every class keeps its share), or the first (`subset="first"`)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 32,
        channels: int = 3,
        num: int | None = None,
        subset: str = "evenly_spaced",
    ):
        if channels not in (1, 3):
            raise ValueError(f"image_folder has 1 or 3 channels, not {channels}")
        if subset not in SUBSETS:
            raise DataError(f"data.subset={subset!r}: choose {' or '.join(SUBSETS)}")
        check_split(split)
        root = Path(root)
        folder = root / split if (root / "train").is_dir() else root
        if not folder.is_dir():
            raise DataError(
                f"image folder {folder} does not exist; set data.root=<a folder of images, "
                "optionally one sub-folder per class>"
            )
        files = find_images(folder)
        if not files:
            raise DataError(
                f"image folder {folder} has no images ({', '.join(sorted(EXTENSIONS))})"
            )
        class_of = classes_of(folder, files)
        if folder != root and split != "train":  # the labels are the training split's
            train = root / "train"
            self.class_names = tuple(sorted(set(classes_of(train, find_images(train)))))
            unknown = sorted(set(class_of) - set(self.class_names))
            if unknown:
                raise DataError(
                    f"{folder} has classes that {train} lacks ({', '.join(unknown)}); a class "
                    "the model never trained on has no label"
                )
        else:
            self.class_names = tuple(sorted(set(class_of)))
        index = {name: i for i, name in enumerate(self.class_names)}
        self.folder = folder
        if subset == "evenly_spaced":
            keep = evenly_spaced(len(files), num)
        else:
            keep = range(len(files))[:num]
        self.files = [files[i] for i in keep]
        self.labels = [index[class_of[i]] for i in keep]
        self.image_size = image_size
        self.channels = channels
        self.shape = (channels, image_size, image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        array = load_image(self.files[index], self.image_size, self.channels)
        x = torch.from_numpy(array).permute(2, 0, 1)
        return to_unit_range(x), self.labels[index]
