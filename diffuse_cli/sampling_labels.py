"""Which class each sample is drawn for: `class_labels` of `diffuse sample`."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, ListConfig

from diffuse_cli.errors import UserError
from diffuse_cli.samplers.noise import seeded_generator

LABEL_STREAM = 0x5EED_1ABE1 << 64  # keeps the label draw apart from the sample's noise


def sample_labels(
    cfg: DictConfig, num_classes: int | None, indices: range, null_label: int | None = None
) -> torch.Tensor | None:
    """int64 labels of samples `indices`, or None when sampling without labels.

    class_labels = "random": uniform over num_classes, drawn from a generator seeded by
    (seed, index), so a sample's label does not depend on batch size or process count;
    a list (or one index): sample i gets list[i % len(list)]; null: the null label
    (unconditional sampling of a model trained with label dropout), or no labels for an
    unconditional setup.
    """
    choice = cfg.class_labels
    if isinstance(choice, int) and not isinstance(choice, bool):  # class_labels=3: [3]
        choice = [choice]
    if num_classes is None:
        if isinstance(choice, (list, ListConfig)):
            raise UserError(
                f"class_labels={list(choice)} was given, but this run's model is unconditional "
                "(model.num_classes=null); use guidance=classifier to steer it by class"
            )
        return None
    if choice is None:
        if null_label is None:
            raise UserError(
                "class_labels=null samples unconditionally, which needs a class-conditional "
                "model trained with label dropout (trainer.label_dropout > 0)"
            )
        return torch.full((len(indices),), null_label, dtype=torch.int64)
    if choice == "random":
        draws = [
            seeded_generator(((cfg.seed << 32) + i) ^ LABEL_STREAM).integers(num_classes)
            for i in indices
        ]
        return torch.tensor(draws, dtype=torch.int64)
    if isinstance(choice, (list, ListConfig)) and len(choice) > 0:
        labels = list(choice)
        bad = [
            y
            for y in labels
            if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < num_classes
        ]
        if bad:
            raise UserError(
                f"class_labels={labels}: {bad} are not class indices 0..{num_classes - 1}"
            )
        return torch.tensor([labels[i % len(labels)] for i in indices], dtype=torch.int64)
    raise UserError(
        f"class_labels={choice!r} must be 'random', a non-empty list of class indices such as "
        "[3,3,5], or null"
    )
