"""Post-hoc EMA in the run directory: the snapshots a trainer.ema=power run writes, and the EMA
of any other width reconstructed from them (Karras et al. 2024, sec. 3.2 and app. C.3).

    <run_dir>/ema_snapshots/step_XXXXXXXX/std_0.050.safetensors   one per tracked sigma_rel
    <run_dir>/ema_reconstructed/std_0.080-step_XXXXXXXX-<digest>.safetensors
                                                                   the cache of a reconstruction

A snapshot folder is written like a checkpoint (a hidden temporary folder, fsynced, renamed into
place), so a crash leaves whole snapshots only; a resumed run removes those past its
checkpoint and writes them again, bit-identical, as an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save, save_file

from diffuse_cli.errors import UserError
from diffuse_cli.files import give_plain_file_mode, replacing
from diffuse_cli.posthoc_ema import MAX_STD, combination
from diffuse_cli.runs import read_run_config
from diffuse_cli.train.checkpoint import (
    FILE_ERRORS,
    LoadedWeights,
    fsync_dir,
    fsync_files,
    load_state_checked,
    match_mode,
    step_name,
)
from diffuse_cli.train.ema import std_label

SNAPSHOTS, RECONSTRUCTED = "ema_snapshots", "ema_reconstructed"
# The largest relative L2 error of the fitted profile that is still taken as the asked-for
# EMA: beyond it the snapshots cannot express that width (its coefficients no longer sum to 1
# either, which scales the weights).
MAX_FIT_ERROR = 0.10


def snapshot_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / SNAPSHOTS


def write_snapshot(run_dir: str | Path, step: int, profiles: dict[float, dict]) -> Path:
    """Write each profile's state dict (sigma_rel -> tensors) as step `step`'s snapshot."""
    root = snapshot_root(run_dir)
    name = step_name(step)
    tmp = root / f".tmp-{name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for std, state in profiles.items():
            tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
            save_file(tensors, tmp / f"std_{std_label(std)}.safetensors")
        match_mode(tmp)
        fsync_files(tmp)
        final = root / name
        if final.exists():  # written before a crash that lost its checkpoint
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(root)
    except FILE_ERRORS as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(err, "strerror", None) or err
        raise UserError(
            f"could not write the EMA snapshot {name} in '{root}' ({reason}); the checkpoints "
            "are intact: fix the cause (free disk space, permissions) and run the same "
            "command to resume"
        ) from err
    return final


def discard_snapshots_after(run_dir: str | Path, step: int) -> None:
    """Remove half-written snapshots and those of steps past `step` (the checkpoint a run
    resumes from): the resumed run writes them again, as the uninterrupted run did."""
    root = snapshot_root(run_dir)
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    for folder, _ in snapshot_folders(root):
        if step_of_folder(folder) > step:
            shutil.rmtree(folder)


def step_of_folder(folder: Path) -> int:
    return int(folder.name[len("step_") :])


def snapshot_folders(root: Path) -> list[tuple[Path, dict[float, Path]]]:
    """(folder, {sigma_rel: file}) of each snapshot under `root`, oldest first."""
    found = []
    for folder in root.glob("step_*"):
        if folder.is_dir() and folder.name[5:].isdigit():
            files = {_width(f): f for f in folder.glob("std_*.safetensors") if _width(f)}
            found.append((folder, files))
    return sorted(found, key=lambda item: step_of_folder(item[0]))


def _width(path: Path) -> float | None:
    """sigma_rel from 'std_0.050.safetensors'; None for a name that is not a snapshot's."""
    try:
        return float(path.stem[len("std_") :])
    except ValueError:
        return None


def snapshot_step(run_dir: str | Path, step: int | None = None) -> int:
    """The snapshot step to reconstruct at: `step`, or the latest; a one-line refusal naming
    the steps there are when it has none."""
    folders = snapshot_folders(snapshot_root(run_dir))
    if not folders:
        raise UserError(
            f"the run in '{run_dir}' has no EMA snapshots yet (trainer.ema=power writes one "
            "every trainer.ema_snapshot_every steps); train it further, or drop ema_std"
        )
    steps = [step_of_folder(folder) for folder, _ in folders]
    if step is None:
        return steps[-1]
    if step not in steps:
        shown = ", ".join(map(str, steps[:3] + (["..."] if len(steps) > 6 else []) + steps[-3:]))
        raise UserError(
            f"checkpoint={step}: '{run_dir}' has no EMA snapshot of step {step} to reconstruct "
            f"ema_std at; it has steps {shown}"
        )
    return step


def check_ema_std(run_cfg: DictConfig, run_dir: str | Path, std: float) -> None:
    """Refuse, in one line, an ema_std that no snapshots of this run can give."""
    if not 0.0 < std <= MAX_STD:
        raise UserError(
            f"ema_std={std} is outside (0, {MAX_STD:.3f}]: a power-function EMA is at most "
            "the plain average of all weights (sigma_rel = 1/sqrt(12)); pick a smaller std"
        )
    if run_cfg.trainer.get("ema", "exponential") != "power":
        raise UserError(
            f"ema_std={std} needs snapshots of power-function EMAs, but '{run_dir}' was trained "
            "with trainer.ema=exponential; drop ema_std (its EMA is the checkpoint's), or train "
            "with trainer.ema=power"
        )


def cache_name(std: float, step: int, used: list[tuple[int, float, Path]]) -> str:
    """'std_0.080-step_00001000-<digest>.safetensors': the digest covers every snapshot used
    (step, sigma_rel, size and modification time), so a snapshot written anew is a new name."""
    listed = [(s, std_label(x), f.stat().st_size, f.stat().st_mtime_ns) for s, x, f in used]
    digest = hashlib.sha1(json.dumps(listed).encode()).hexdigest()[:12]
    return f"std_{std_label(std)}-{step_name(step)}-{digest}.safetensors"


def load_reconstructed(
    model: torch.nn.Module, run_dir: str | Path, std: float, step: int | None = None
) -> LoadedWeights:
    """Load into `model` the power EMA of width `std` at snapshot `step` (None: the latest),
    the least-squares combination of every snapshot up to that step (EDM2 app. C.3). The
    result is cached in <run_dir>/ema_reconstructed and read from there while the snapshots
    it used are unchanged."""
    check_ema_std(read_run_config(run_dir), run_dir, std)
    step = snapshot_step(run_dir, step)
    used = [
        (step_of_folder(folder), s, f)
        for folder, files in snapshot_folders(snapshot_root(run_dir))
        if step_of_folder(folder) <= step
        for s, f in sorted(files.items())
    ]
    cache = Path(run_dir) / RECONSTRUCTED / cache_name(std, step, used)
    try:
        data = cache.read_bytes() if cache.is_file() else None
        if data is None:
            data = save(_combine(used, std, step, run_dir))
            _write_cache(cache, data)
        state = load_safetensors(data)
    except FILE_ERRORS as err:
        raise UserError(
            f"the EMA snapshots in '{snapshot_root(run_dir)}' cannot be read ({err}); "
            "a damaged one can be removed and written again by training from the checkpoint "
            "before it"
        ) from err
    load_state_checked(model, state, f"the EMA reconstructed in '{cache}'")
    folder = snapshot_root(run_dir) / step_name(step)
    return LoadedWeights(folder, step, hashlib.sha256(data).hexdigest())


def _combine(used: list[tuple[int, float, Path]], std: float, step: int, run_dir) -> dict:
    """sum_i x_i snapshot_i, accumulated in float64, for the x that fit `std`'s profile."""
    x, error = combination([(s, sigma) for s, sigma, _ in used], (step, std))
    if error > MAX_FIT_ERROR:
        tracked = sorted({sigma for _, sigma, _ in used})
        raise UserError(
            f"ema_std={std} cannot be expressed by the {len(used)} EMA snapshots of "
            f"'{run_dir}' up to step {step} (profile fit error {error:.0%} > "
            f"{MAX_FIT_ERROR:.0%}); pick a std nearer the tracked ones "
            f"{[float(std_label(t)) for t in tracked]}, or write snapshots more often "
            "(trainer.ema_snapshot_every)"
        )
    total: dict[str, torch.Tensor] = {}
    latest: dict[str, torch.Tensor] = {}
    for coefficient, (_, _, path) in zip(np.asarray(x), used, strict=True):
        for key, value in load_file(path).items():
            if value.is_floating_point():
                term = value.double() * float(coefficient)
                total[key] = total[key] + term if key in total else term
            else:  # integer buffers are not averaged: the latest snapshot's
                latest[key] = value
    like = load_file(used[-1][2])
    return {k: total[k].to(like[k].dtype) if k in total else latest[k] for k in like}


def _write_cache(path: Path, data: bytes) -> None:
    """Best effort: a run folder that cannot be written to is still read (no cache then)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            tmp.write_bytes(data)
        give_plain_file_mode(path)
    except OSError:
        pass
