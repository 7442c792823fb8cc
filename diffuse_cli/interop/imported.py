"""What a reader of a foreign checkpoint returns: the config the network needs and its weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImportedNetwork:
    """A foreign network in this toolkit's terms.

    Attributes:
        source: the format it came from ("openai" or "diffusers").
        config: overrides of the model-defining groups, nested as in a run's config.yaml, e.g.
            {"model": {"model_channels": 128, ...}, "schedule": {"name": "linear", ...},
            "prediction": {"name": "eps"}, "variance": {"name": "learned_range"},
            "data": {"channels": 3, "image_size": 64}}; groups the source does not record are
            left out (they come from the command's overrides).
        state_dict: the weights, under the keys of the network build_model makes from config.
        notes: what the reader inferred or assumed, printed by the command.
        needs_given: settings the reader took from the command's config because the source does
            not record them, each as alternatives ("model.num_heads", "model.num_head_channels"):
            the command refuses to guess, so one of each must be on its command line (or in a
            preset it names).
    """

    source: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)
    needs_given: list[tuple[str, ...]] = field(default_factory=list)
