"""Inference mode for any callable model: a network built for training still samples without
dropout, and is handed back in the mode it came in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

WRAPPED = ("model", "cond_fn", "classifier")  # where guidance and NFE wrappers keep callables


def networks_of(*callables) -> list[torch.nn.Module]:
    """The nn.Modules behind `callables`: themselves, or what wrappers such as guidance and
    NFE counting keep under WRAPPED (a guidance classifier too), followed down; none for
    other callables (oracles, closures)."""
    found, todo = [], list(callables)
    while todo:
        item = todo.pop()
        if isinstance(item, torch.nn.Module):
            if not any(item is f for f in found):
                found.append(item)
        elif item is not None:
            todo += [getattr(item, name) for name in WRAPPED if hasattr(item, name)]
    return found


@contextlib.contextmanager
def evaluating(*callables) -> Iterator[None]:
    """Run the networks behind `callables` in eval mode inside the block, then restore each
    submodule's own training flag (a model may mix modes on purpose)."""
    nets = networks_of(*callables)
    modes = [(m, m.training) for net in nets for m in net.modules()]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
