"""Train the built-in judge of the embedded shapes data and write its weights into the package.

    python scripts/train_builtin_extractor.py [--epochs 30] [--out PATH] [--threads 2]

Trains `diffuse_cli.evaluate.features.builtin.ShapesJudge` on the shapes *test* split (1000
images, data seed 0), never on the training split that diffusion runs learn from, to predict
shape, colour, size and position (random horizontal flips; targets read from the pixels), and
sets the feature scale (the RMS of the embedding over those images). Then
it measures the shape accuracy, colour accuracy and geometry error on shapes the judge never
saw: 2000 images generated with another seed (data seed 1), and the first 2000 images of the
training split. Deterministic on a given machine (fixed seeds, deterministic algorithms, fixed
thread count); about a minute or two on 2 CPU cores.

The weights go to diffuse_cli/evaluate/features/builtin_shapes.safetensors, with the accuracy
and the training settings in the file's metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from diffuse_cli.data.shapes import Shapes
from diffuse_cli.evaluate.features.builtin import WEIGHTS, ShapesJudge, shapes_targets

TRAIN = {"split": "test", "num": 1000, "seed": 0}  # the held-out split of the default data
CHECKS = {
    "fresh seed 1 (2000)": {"split": "test", "num": 2000, "seed": 1},
    "train split (first 2000)": {"split": "train", "num": 2000, "seed": 0},
}


def uint8_images(split: str, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = Shapes(split, num, 32, 3, seed)
    data[0]  # renders every image once
    return data._images, data._labels


def to_input(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def loss_fn(model: ShapesJudge, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = shapes_targets(images)
    out = model.heads(model.embed(to_input(images)))
    return (
        F.cross_entropy(out["shape"], labels)
        + F.cross_entropy(out["colour"], targets["colour"])
        + 10 * F.mse_loss(out["geometry"], targets["geometry"])
    )


def train(model: ShapesJudge, epochs: int, batch: int, lr: float) -> None:
    images, labels = uint8_images(**TRAIN)
    g = torch.Generator().manual_seed(0)
    steps = epochs * (len(images) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=g)
        total = 0.0
        for i in range(len(images) // batch):
            idx = order[i * batch : (i + 1) * batch]
            x = images[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            loss = loss_fn(model, x, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / (len(images) // batch):.4f}")
    model.eval()
    set_feature_scale(model, images)


@torch.no_grad()
def set_feature_scale(model: ShapesJudge, images: torch.Tensor) -> None:
    """feature_scale = the RMS of the embedding over the training images, so that the
    features (embedding / scale) are of order 1."""
    embedding = torch.cat([model.embed(to_input(x)) for x in images.split(500)])
    model.feature_scale.fill_(embedding.double().pow(2).mean().sqrt().float())


@torch.no_grad()
def check(model: ShapesJudge, split: str, num: int, seed: int) -> dict:
    images, labels = uint8_images(split, num, seed)
    targets = shapes_targets(images)
    outs = [model.heads(model.embed(to_input(x))) for x in images.split(500)]
    shape = torch.cat([o["shape"] for o in outs]).argmax(1)
    colour = torch.cat([o["colour"] for o in outs]).argmax(1)
    geometry = torch.cat([o["geometry"] for o in outs])
    return {
        "shape_accuracy": float((shape == labels).float().mean()),
        "colour_accuracy": float((colour == targets["colour"]).float().mean()),
        "geometry_rmse": float((geometry - targets["geometry"]).pow(2).mean().sqrt()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    model = ShapesJudge()
    tick = time.perf_counter()
    train(model, args.epochs, args.batch, args.lr)
    seconds = time.perf_counter() - tick
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    results = {name: check(model, **spec) for name, spec in CHECKS.items()}
    metadata = {
        "trained_on": json.dumps({"dataset": "shapes", **TRAIN}),
        "settings": json.dumps({k: vars(args)[k] for k in ("epochs", "batch", "lr")}),
        "held_out": json.dumps(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, args.out, metadata=metadata)
    # the checks again from the file, as `load_builtin_extractor` will read it
    reloaded = ShapesJudge()
    reloaded.load_state_dict(load_file(args.out))
    assert check(reloaded.eval(), **CHECKS["fresh seed 1 (2000)"]) == results["fresh seed 1 (2000)"]
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:8]
    print(f"trained in {seconds:.0f} s; wrote {args.out} (sha256 {digest})")
    for name, r in results.items():
        print(
            f"{name}: shape accuracy {r['shape_accuracy']:.4f}, colour accuracy "
            f"{r['colour_accuracy']:.4f}, geometry RMSE {r['geometry_rmse']:.4f}"
        )


if __name__ == "__main__":
    main()
