"""`diffuse sample`: draw samples from a run's latest EMA checkpoint and write them to disk.

Every sample i is seeded by (seed, i), so a sample does not depend on the batch size or on how
many processes share the work.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from diffuse_cli.build import data_shape, resolve_steps, sample
from diffuse_cli.errors import UserError
from diffuse_cli.images import save_preview, to_uint8_nhwc
from diffuse_cli.runs import with_run_config
from diffuse_cli.samplers import NFECounter, PerSampleNoise


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for, but no CUDA GPU is available")
    return torch.device(name)


def sample_seed(seed: int, index: int) -> int:
    return (seed << 32) + index


def sampler_tag(cfg: DictConfig, steps: int) -> str:
    """'<sampler>-<steps>' (with '-eta<eta>' for stochastic DDIM): names sample folders and
    eval reports, so runs of one sampler setting land in one place."""
    name = f"{cfg.sampler.name}-{steps}"
    if cfg.sampler.name == "ddim" and cfg.sampler.eta != 0:
        name += f"-eta{cfg.sampler.eta:g}"
    return name


def output_dir(cfg: DictConfig, steps: int) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return Path(cfg.run_dir) / "samples" / sampler_tag(cfg, steps)


def draw_samples(
    cfg: DictConfig, model, diffusion, device: torch.device, indices: range
) -> torch.Tensor:
    """Samples number `indices` (on the CPU), in batches of cfg.batch_size."""
    shape = data_shape(cfg)
    out = []
    for start in range(indices.start, indices.stop, cfg.batch_size):
        chunk = range(start, min(start + cfg.batch_size, indices.stop))
        noise = PerSampleNoise([sample_seed(cfg.seed, i) for i in chunk], device)
        x_T = noise.randn(shape)
        out.append(sample(cfg, model, diffusion, x_T, generator=noise, progress=cfg.progress).cpu())
    return torch.cat(out)


def _save_npz(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, arr_0=arr)
    os.replace(tmp, path)


def sample_command(cfg: DictConfig) -> Path:
    from diffuse_cli.api import load_run

    cfg = with_run_config(cfg, cfg.run_dir)
    if cfg.num_samples <= 0:
        raise UserError(f"num_samples={cfg.num_samples} must be > 0")
    if cfg.batch_size <= 0:
        raise UserError(f"batch_size={cfg.batch_size} must be > 0")
    device = pick_device(cfg.device)
    _, model, diffusion = load_run(cfg.run_dir, device=device)
    steps = resolve_steps(cfg, diffusion)
    out = output_dir(cfg, steps)
    print(f"sampling {cfg.num_samples} with {cfg.sampler.name}, {steps} steps, on {device}")
    counted = NFECounter(model)
    x = draw_samples(cfg, counted, diffusion, device, range(cfg.num_samples))
    batches = -(-cfg.num_samples // cfg.batch_size)
    print(f"{counted.calls // batches} network evaluations per sample")
    out.mkdir(parents=True, exist_ok=True)
    images = x.dim() == 4
    _save_npz(out / "samples.npz", to_uint8_nhwc(x) if images else x.numpy())
    preview = out / ("grid.png" if images else "scatter.png")
    save_preview(x[:256] if images else x, preview)
    print(f"wrote {out / 'samples.npz'} and {preview}")
    return out
