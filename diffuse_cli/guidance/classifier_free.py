"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6):

    eps~ = eps(x_t, null) + w (eps(x_t, y) - eps(x_t, null))

w = 1 is plain conditional sampling and w = 0 unconditional; the paper writes the same rule as
(1 + w') eps(x_t, y) - w' eps(x_t, null), so its guidance weight w' is w - 1 here.
"""

import torch


class ClassifierFree:
    """model(x_t, t, y) -> the guided output of a class-conditional network trained with label
    dropout (its null label is `num_classes`). Both branches run in one forward pass over a
    doubled batch.

    The rule is applied to the raw mean output whatever the prediction type: x0 and v are
    affine in eps at fixed (x_t, t), and the weights (1 - w, w) sum to one, so combining the
    outputs equals combining the eps they imply. A learned variance (the channels after the
    data's) is taken from the conditional branch, as GLIDE does.
    """

    def __init__(self, model, scale: float):
        if not getattr(model, "num_classes", None):
            raise ValueError("classifier-free guidance needs a class-conditional network")
        self.model, self.scale, self.null_label = model, float(scale), int(model.num_classes)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(y, self.null_label)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        c = x.shape[1]
        mean = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([mean, cond[:, c:]], dim=1)
