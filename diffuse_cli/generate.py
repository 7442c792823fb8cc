"""`diffuse sample`: draw samples from a run's latest EMA checkpoint and write them to disk.

Every sample i is seeded by (seed, i) (sampling_loop.py, which the sample-quality eval shares),
so a sample does not depend on the batch size or on how many processes share the work: under
`accelerate launch` each process draws a contiguous share of the indices and the main process
writes them all.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from diffuse_cli import loading
from diffuse_cli.build import build_diffusion, check_family, data_shape, resolve_steps
from diffuse_cli.distributed import gather_exact, process_state, shard
from diffuse_cli.errors import UserError
from diffuse_cli.files import replacing
from diffuse_cli.images import from_uint8_nhwc, save_preview, to_uint8_nhwc
from diffuse_cli.ranges import POSITIVE, check_ranges, one_of
from diffuse_cli.runs import read_run_config, variant_name, with_run_config
from diffuse_cli.sampling_loop import GuidedModel, guided_model, seeded_batches
from diffuse_cli.train.checkpoint import agreed_step, step_name
from diffuse_cli.train.ema_snapshots import check_ema_std, snapshot_step

SAMPLE_RANGES = {"num_samples": POSITIVE, "batch_size": POSITIVE}
GUIDANCES = one_of("none", "classifier", "cfg")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for, but no CUDA GPU is available")
    return torch.device(name)


def sampler_tag(cfg: DictConfig, steps: int) -> str:
    """'<sampler>-<steps>', then every sampler option that differs from the sampler's shipped
    config ('-eta0.5', '-spacingkarras', '-no_clip_denoised', ...), the guidance, the class
    labels unless random ('-labels3', '-unconditional'), '-raw' for an eval of the raw (not
    EMA) weights and the seed unless 0 ('-seed1'). It names sample folders and eval reports,
    so one setting always lands in one place and two settings never overwrite each other."""
    name = f"{cfg.sampler.name}-{steps}"
    if cfg.sampler.name == "langevin":  # L levels x T steps
        name += f"x{cfg.sampler.steps_per_level}"
    for key, default in shipped_sampler_options(cfg.sampler.name).items():
        value = cfg.sampler.get(key)
        if key not in ("name", "steps_per_level") and value != default:
            name += "-" + _setting(key, value)
    guidance = cfg.get("guidance")
    if guidance is not None and guidance.name != "none":
        name += f"-{guidance.name}{guidance.scale:g}"
        if guidance.name == "classifier":
            name += classifier_tag(cfg)
    if "class_labels" in cfg and cfg.class_labels is None:
        name += "-unconditional"
    elif "class_labels" in cfg and cfg.class_labels != "random":
        name += "-" + labels_tag(cfg.class_labels)
    return variant_name(cfg, name)


def classifier_tag(cfg: DictConfig) -> str:
    """'' for the default guidance classifier (the `classifier` folder beside the run),
    '-clf_<folder>_<digest of its path>' for any other, so two classifiers never share a
    folder of samples or reports."""
    given = os.path.abspath(str(cfg.guidance.classifier))
    if given == os.path.abspath(os.path.join(str(cfg.run_dir), "..", "classifier")):
        return ""
    digest = hashlib.sha1(given.encode()).hexdigest()[:6]
    return f"-clf_{os.path.basename(given)}_{digest}"


def labels_tag(labels) -> str:
    """'labels3', 'labels0_3': the given class labels, or their digest when there are many."""
    listed = [str(y) for y in (labels if isinstance(labels, list | ListConfig) else [labels])]
    if len(listed) <= 8:
        return "labels" + "_".join(listed)
    digest = hashlib.sha1(",".join(listed).encode()).hexdigest()[:8]
    return f"labels{len(listed)}-{digest}"


def shipped_sampler_options(name: str) -> dict:
    """configs/sampler/<name>.yaml as the package ships it ({} for a sampler file of a user's
    own config folder)."""
    path = resources.files("diffuse_cli.configs") / "sampler" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.create(path.read_text())) if path.is_file() else {}


def _setting(key: str, value) -> str:
    if isinstance(value, bool):
        return key if value else f"no_{key}"
    if isinstance(value, float):
        return f"{key}{value:g}"
    return f"{key}{'none' if value is None else value}"


def output_dir(cfg: DictConfig, steps: int) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return Path(cfg.run_dir) / "samples" / sampler_tag(cfg, steps)


def draw_samples(
    cfg: DictConfig,
    guided: GuidedModel,
    diffusion,
    device: torch.device,
    indices: range,
    progress: bool = True,
) -> torch.Tensor:
    """Samples number `indices` (sampling_loop.seeded_batches), gathered on the CPU."""
    out = [x.cpu() for _, x in seeded_batches(cfg, guided, diffusion, device, indices, progress)]
    return torch.cat(out) if out else torch.empty(0, *data_shape(cfg))


def _save_npz(path: Path, arr: np.ndarray, labels: np.ndarray | None) -> None:
    """Written beside `path` and renamed: the old file or the new one, never a part, and no
    partial file left behind on a full disk."""
    arrays = {"arr_0": arr} if labels is None else {"arr_0": arr, "arr_1": labels}
    with replacing(path) as tmp:
        np.savez(tmp, **arrays)


def sample_command(cfg: DictConfig) -> Path:
    cfg = with_run_config(cfg, cfg.run_dir)
    check_family(cfg)  # a sampler of the other family fails before any weights are read
    check_ranges(cfg, SAMPLE_RANGES)
    steps = resolve_steps(cfg, build_diffusion(cfg))  # bad sampler settings: before loading
    GUIDANCES.check("guidance", cfg.guidance.name)
    state = process_state()
    device = state.device if state.num_processes > 1 else pick_device(cfg.device)
    if cfg.ema_std is not None:  # refused before anything is read
        check_ema_std(read_run_config(cfg.run_dir), cfg.run_dir, cfg.ema_std)
    find = snapshot_step if cfg.ema_std is not None else None  # the snapshot's step
    step = agreed_step(cfg.run_dir, cfg.checkpoint, find=find)
    _, model, diffusion = loading.load_run(
        cfg.run_dir, device=device, config=cfg, step=step, ema_std=cfg.ema_std
    )
    guided = guided_model(cfg, model, diffusion, device)
    labels = guided.labels(cfg, range(cfg.num_samples))  # every sample's, for samples.npz
    out = output_dir(cfg, steps)
    what = f"{steps} steps"
    if cfg.sampler.name == "langevin":
        what = f"{steps} noise levels x {cfg.sampler.steps_per_level} steps"
    if cfg.guidance.name != "none":
        what += f", {cfg.guidance.name} guidance x{cfg.guidance.scale:g}"
    where = f"{state.num_processes} processes" if state.num_processes > 1 else str(device)
    print_on_main = print if state.is_main_process else (lambda *a, **k: None)
    ema = "EMA" if cfg.ema_std is None else f"EMA of sigma_rel {cfg.ema_std:.3f} (post hoc)"
    print_on_main(f"sampling {cfg.num_samples} with {cfg.sampler.name}, {what}, on {where}, "
                  f"{step_name(step)} {ema}")  # fmt: skip
    share = shard(cfg.num_samples, state.process_index, state.num_processes)
    progress = cfg.progress and state.is_main_process  # one bar, the main process's
    x = draw_samples(cfg, guided, diffusion, device, share, progress)
    images = x.dim() == 4
    arr = torch.from_numpy(to_uint8_nhwc(x)) if images else x  # 8-bit: 1/4 of the float size
    if state.num_processes > 1:  # each process drew samples number `share`; main writes all
        gathered = gather_exact({"index": torch.tensor(share), "x": arr}, cfg.num_samples)
        if not state.is_main_process:
            return out
        arr = gathered["x"]
    doubled = (
        " (each on a doubled batch: both guidance branches)" if cfg.guidance.name == "cfg" else ""
    )
    if guided.batches_drawn:
        print(f"{guided.evaluations_per_sample()} network evaluations per sample{doubled}")
    out.mkdir(parents=True, exist_ok=True)
    saved = None if labels is None or cfg.class_labels is None else labels.numpy()
    _save_npz(out / "samples.npz", arr.numpy(), saved)  # arr_1: the labels, unless unconditional
    preview = out / ("grid.png" if images else "scatter.png")
    save_preview(from_uint8_nhwc(arr[:256]) if images else arr, preview)
    print(f"wrote {out / 'samples.npz'} and {preview}")
    return out
