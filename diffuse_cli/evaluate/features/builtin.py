"""The built-in feature extractor and judge of the embedded `shapes` data.

Inception-v3 features (Heusel et al. 2017) mean little on 32x32 flat-colour shapes and need
weights that an offline machine may not have, so the embedded data ships its own judge: a small
CNN trained by `scripts/train_builtin_extractor.py` on the shapes *test* split only, so it never
saw the training split that generators learn from.

It is trained on four things at once: the shape (4 classes), the colour (6 palette entries), and
the size and position of the shape. A shape classifier alone would learn to ignore colour, size
and position, and a Frechet distance in its feature space would not see a generator that gets
them wrong; with all four targets the features carry every factor the data varies in.

    judge = load_builtin_extractor()
    judge.logits(x)     # [B, 4] shape-class logits (circle, square, triangle, cross)
    judge.features(x)   # [B, 128] the penultimate layer, for Frechet / kernel distances

x is float in [-1, 1], NCHW, [B, 3, 32, 32] (anything else is refused). Measured accuracy of
the shipped weights: docs/eval_quality.md ("The built-in judge itself").
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("builtin_shapes.safetensors")
IMAGE_SHAPE = (3, 32, 32)
FEATURE_DIM = 128
CLASS_NAMES = ("circle", "square", "triangle", "cross")
NUM_COLOURS = 6  # the shapes palette
NUM_GEOMETRY = 3  # area fraction, centroid x, centroid y


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]


class ShapesJudge(nn.Module):
    """CNN over 32x32 RGB: three conv stages (32, 64, 64 channels at 32, 16, 8 pixels), a
    linear embedding of the 4x4 map (flattened, not averaged, so position survives) into
    `FEATURE_DIM` numbers, and three heads on ReLU(embedding): shape, colour, geometry.

    `features` is the embedding divided by `feature_scale` (one number, stored with the
    weights: the RMS of the embedding over the images it was trained on), so features are of
    order 1, like Inception's pool3 features. KID's kernel (x.y / D + 1)^3 then stays in a
    range where torch-fidelity's float32 sums keep their precision.
    """

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            *_conv(3, 32), *_conv(32, 32), nn.MaxPool2d(2),
            *_conv(32, 64), *_conv(64, 64), nn.MaxPool2d(2),
            *_conv(64, 64), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, FEATURE_DIM),
        )  # fmt: skip
        self.shape_head = nn.Linear(FEATURE_DIM, len(CLASS_NAMES))
        self.colour_head = nn.Linear(FEATURE_DIM, NUM_COLOURS)
        self.geometry_head = nn.Linear(FEATURE_DIM, NUM_GEOMETRY)
        self.register_buffer("feature_scale", torch.ones(()))

    @staticmethod
    def check_input(x: torch.Tensor) -> None:
        if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"the built-in shapes extractor takes images [B, 3, 32, 32] in [-1, 1], got {got}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"the built-in shapes extractor takes float images in [-1, 1], got {x.dtype}"
            )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 32, 32] in [-1, 1] -> [B, FEATURE_DIM] unscaled embedding (what the heads
        read)."""
        self.check_input(x)
        return self.body(x.float())

    def heads(self, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(embedding)
        return {
            "shape": self.shape_head(h),
            "colour": self.colour_head(h),
            "geometry": self.geometry_head(h),
        }

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both at the cost of one pass: ([B, FEATURE_DIM], [B, 4])."""
        embedding = self.embed(x)
        return embedding / self.feature_scale, self.heads(embedding)["shape"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 32, 32] in [-1, 1] -> [B, FEATURE_DIM] penultimate features, of order 1."""
        return self.embed(x) / self.feature_scale

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 32, 32] in [-1, 1] -> [B, 4] shape-class logits (CLASS_NAMES order)."""
        return self.heads(self.embed(x))["shape"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


@cache
def weights_digest() -> str:
    """The first 8 hex digits of the weights file's SHA-256: names the extractor in caches."""
    return hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()[:8]


def load_builtin_extractor(device: str | torch.device = "cpu") -> ShapesJudge:
    """The shipped judge of the shapes data, in eval mode with gradients off."""
    from safetensors.torch import load_file

    model = ShapesJudge()
    model.load_state_dict(load_file(WEIGHTS))
    return model.to(device).eval().requires_grad_(False)


def shapes_targets(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Colour and geometry targets read from uint8 shapes images [B, 3, H, W].

    Read from the pixels, not from the renderer's parameters, so they stay true under flips
    and do not depend on how data/shapes.py draws: the colour is the palette entry most pixels
    are close to; the geometry is the foreground's area fraction and centroid in [-1, 1].
    """
    from diffuse_cli.data.shapes import BACKGROUND, PALETTE

    x = images.float()
    bg = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1)
    fg = (x - bg).abs().sum(1) > 60  # [B, H, W]; anti-aliased edges half-way count
    palette = torch.tensor(PALETTE, dtype=torch.float32)  # [K, 3]
    dist = (x.unsqueeze(1) - palette.view(1, -1, 3, 1, 1)).abs().sum(2)  # [B, K, H, W]
    close = dist < 30
    colour = close.flatten(2).sum(2).argmax(1)
    h, w = fg.shape[1:]
    ys = torch.linspace(-1, 1, h).view(1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, w)
    n = fg.flatten(1).sum(1).clamp(min=1).float()
    area = fg.flatten(1).float().mean(1)
    cx = (fg * xs).flatten(1).sum(1) / n
    cy = (fg * ys).flatten(1).sum(1) / n
    return {"colour": colour, "geometry": torch.stack([4 * area, cx, cy], 1)}
