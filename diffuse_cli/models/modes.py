"""Inference mode for any callable model: a network built for training still samples without
dropout, and is handed back in the mode it came in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def network_of(model) -> torch.nn.Module | None:
    """The nn.Module behind `model`: itself, or the `.model` of wrappers such as guidance and
    NFE counting (followed down); None for other callables (oracles, closures)."""
    while not isinstance(model, torch.nn.Module) and hasattr(model, "model"):
        model = model.model
    return model if isinstance(model, torch.nn.Module) else None


@contextlib.contextmanager
def evaluating(model) -> Iterator[None]:
    """Run the network behind `model` in eval mode inside the block, then restore each
    submodule's own training flag (a model may mix modes on purpose)."""
    net = network_of(model)
    if net is None:
        yield
        return
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
