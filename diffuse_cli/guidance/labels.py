"""Label plumbing between samplers (which always pass y when sampling with labels) and networks
(which take y only when class-conditional)."""

import torch


class WithLabels:
    """model(x, t, y): hands y on to a class-conditional network and drops it for an
    unconditional one (unconditional generator + classifier guidance)."""

    def __init__(self, model):
        self.model = model
        self.conditional = bool(getattr(model, "num_classes", None))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        return self.model(x, t, y) if self.conditional else self.model(x, t)
