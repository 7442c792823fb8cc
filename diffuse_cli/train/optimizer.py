"""The optimizer of a training run: Adam or AdamW from the trainer config, in torch's fused form
where that is safe.

Fused means one kernel per parameter tensor for the whole update; on the CPU torch otherwise
loops over the tensors one arithmetic operation at a time (measured: docs/benchmarks/bench.md,
change 5). It is not used with fp16 loss scaling: a fused optimizer handles an overflowing
step inside its kernel, so Accelerate would no longer see that the step was skipped, and the
skipped-step count would be wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

KINDS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
FUSED_DEVICE_TYPES = ("cpu", "cuda")


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    tc,
    device: torch.device,
    loss_scaling: bool = False,
) -> torch.optim.Optimizer:
    """`tc` is the trainer config (optimizer, lr, betas, weight_decay); `device` is where the
    parameters will train, `loss_scaling` whether an fp16 loss scaler drives the steps."""
    fused = torch.device(device).type in FUSED_DEVICE_TYPES and not loss_scaling
    return KINDS[tc.optimizer](
        parameters,
        lr=tc.lr,
        betas=tuple(tc.betas),
        weight_decay=tc.weight_decay,
        fused=fused,
    )


def lr_horizon(tc) -> int:
    """The step at which a learning-rate decay reaches 0: trainer.lr_decay_steps, else
    max_steps (also of a saved run config written before the key)."""
    return tc.get("lr_decay_steps") or tc.max_steps


def learning_rate(tc, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): a linear warmup over
    trainer.warmup_steps steps, then trainer.lr, or with trainer.lr_decay a decay to 0 at
    trainer.lr_decay_steps (default max_steps): `linear` as improved-diffusion's
    lr_anneal_steps, `cosine` along a half cosine (Loshchilov & Hutter 2017). A function of
    the step alone, so a resumed run follows the same schedule."""
    warm = tc.warmup_steps
    if step < warm:
        return tc.lr * (step + 1) / warm
    if tc.lr_decay == "constant":
        return tc.lr
    done = min(1.0, (step - warm) / (lr_horizon(tc) - warm))
    if tc.lr_decay == "linear":
        return tc.lr * (1.0 - done)
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * done))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state (moments and step counts) but keep this run's settings:
    the config's betas, weight decay and Adam or AdamW (a resume may change them), and the
    implementation, which depends on the device and loss scaling here."""
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, keep in zip(optimizer.param_groups, settings, strict=True):
        group.update(keep)
        # torch placed each step count by the saved group's form; the fused and capturable
        # kernels want it beside the parameter, the others on the CPU
        beside = group.get("fused") or group.get("capturable")
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if torch.is_tensor(step):  # as torch.optim places it for each form
                moved = step.to(p.device, torch.float32) if beside else step.to("cpu")
                optimizer.state[p]["step"] = moved
