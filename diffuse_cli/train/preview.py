"""Sample grids (or scatter plots for 2-D data) from the EMA model during training."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from diffuse_cli.diffusion import EDMDiffusion, NoiseLevels
from diffuse_cli.images import save_preview
from diffuse_cli.samplers import PerSampleNoise, get_sampler


@torch.no_grad()
def save_training_preview(
    cfg: DictConfig, ema_model, diffusion, shape, run_dir: Path, step: int, device, dataset=None
) -> Path:
    """Strided ancestral sampling with fixed per-sample seeds, so grids of different steps
    compare; ancestral sampling forgives an early, imperfect model more than DDIM does. An NCSN
    run (NoiseLevels) is previewed with annealed Langevin dynamics at its default step size,
    trainer.sample_steps network evaluations spread over its L levels; an EDM run with EDM's Heun
    sampler on the Karras grid at about trainer.sample_steps network evaluations."""
    n = cfg.trainer.sample_num
    noise = PerSampleNoise(list(range(n)), device)
    x_T = noise.randn(tuple(shape))
    kwargs = {}
    if getattr(ema_model, "num_classes", None):  # class i % K in grid cell i: one class a row
        kwargs = {"y": torch.arange(n, device=device) % ema_model.num_classes}
    if isinstance(diffusion, EDMDiffusion):
        steps = max(1, (cfg.trainer.sample_steps + 1) // 2)  # 2 steps - 1 evaluations
        x0 = get_sampler("heun", diffusion)(
            ema_model, diffusion, x_T, steps=steps, noise=noise, model_kwargs=kwargs,
            clip_denoised=x_T.dim() > 2,  # images; 2-D points may lie outside [-1, 1]
        )  # fmt: skip
    elif isinstance(diffusion, NoiseLevels):
        L = diffusion.num_timesteps
        per_level = max(1, cfg.trainer.sample_steps // L)
        x0 = get_sampler("langevin")(
            ema_model, diffusion, x_T, steps=L, noise=noise, steps_per_level=per_level,
            model_kwargs=kwargs,
        )  # fmt: skip
    else:
        steps = min(cfg.trainer.sample_steps, diffusion.num_timesteps)
        x0 = get_sampler("ddpm")(
            ema_model, diffusion, x_T, steps=steps, noise=noise, model_kwargs=kwargs
        )
    out = Path(run_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"step_{step:08d}.png"
    reference = None
    if x0.dim() == 2 and dataset is not None:
        reference = torch.stack([dataset[i][0] for i in range(min(len(dataset), 2000))])
    save_preview(x0, path, reference)
    return path
