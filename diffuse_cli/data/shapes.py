"""`shapes`: the embedded default dataset. Generated images of coloured geometric shapes,
simple enough (flat colours, big shapes, a six-colour palette, one plain background) that a
small diffusion model on a CPU learns them in minutes, and labelled by shape for
class-conditional runs. Nothing is downloaded."""

import numpy as np
import torch
from PIL import Image, ImageDraw

from .base import DiffuseDataset, check_split, to_unit_range

CLASS_NAMES = ("circle", "square", "triangle", "cross")
PALETTE = (
    (230, 45, 45),  # red
    (245, 205, 40),  # yellow
    (50, 190, 70),  # green
    (40, 200, 220),  # cyan
    (55, 90, 230),  # blue
    (215, 60, 215),  # magenta
)
BACKGROUND = (20, 20, 28)
SUPERSAMPLE = 4  # draw at 4x and box-downsample, for anti-aliased edges


def _draw(draw: ImageDraw.ImageDraw, label: int, cx: float, cy: float, r: float, colour):
    """Draw shape `label` centred at (cx, cy) with half-extent r, in supersampled pixels."""
    if label == 0:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif label == 1:
        s = 0.85 * r  # a square of the circle's half-extent looks much bigger than the circle
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
    elif label == 2:
        # Upright triangle with its base at the bottom of the box, so it fills it like the others.
        draw.polygon(((cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)), fill=colour)
    else:
        w = 0.35 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)


def render_shape(seed: int, split_index: int, index: int, image_size: int = 32) -> tuple:
    """Image `index` of a split as (uint8 array [H, W, 3], label).

    Its parameters come from a numpy Generator seeded by (seed, split, index) alone, so any
    image can be made on its own, in any order, in any DataLoader worker. The label cycles
    through the classes so they are exactly balanced.
    """
    rng = np.random.default_rng([seed, split_index, index])
    label = index % len(CLASS_NAMES)
    size = image_size * SUPERSAMPLE
    r = rng.uniform(0.22, 0.4) * size
    margin = 0.04 * size
    cx, cy = rng.uniform(r + margin, size - r - margin, size=2)
    colour = PALETTE[rng.integers(len(PALETTE))]
    image = Image.new("RGB", (size, size), BACKGROUND)
    _draw(ImageDraw.Draw(image), label, cx, cy, r, colour)
    return np.asarray(image.reduce(SUPERSAMPLE)), label


class Shapes(DiffuseDataset):
    """Labelled images of circles, squares, triangles and crosses; deterministic from
    (seed, split, index). All images are rendered once, on first access, and kept as uint8
    (10k 32x32 images take about a second and 30 MB)."""

    class_names = CLASS_NAMES

    def __init__(
        self,
        split: str = "train",
        num: int = 10000,
        image_size: int = 32,
        channels: int = 3,
        seed: int = 0,
    ):
        if channels not in (1, 3):
            raise ValueError(f"shapes has 1 or 3 channels, not {channels}")
        self.split_index = check_split(split)
        self.num = num
        self.image_size = image_size
        self.channels = channels
        self.seed = seed
        self.shape = (channels, image_size, image_size)
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.num

    def _render_all(self) -> None:
        images = np.empty((self.num, self.image_size, self.image_size, 3), dtype=np.uint8)
        labels = np.empty(self.num, dtype=np.int64)
        for i in range(self.num):
            images[i], labels[i] = render_shape(self.seed, self.split_index, i, self.image_size)
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        if self.channels == 1:  # ITU-R 601 luma, as PIL's "L" conversion
            luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * luma).sum(1, keepdim=True).round().to(torch.uint8)
        self._images, self._labels = x.contiguous(), torch.from_numpy(labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} images")
        if self._images is None:
            self._render_all()
        return to_unit_range(self._images[index]), int(self._labels[index])
