"""Checkpoints: step-numbered folders written atomically, and a `latest` pointer.

A checkpoint is first written to a hidden temporary folder, flushed to disk, then renamed into
place; only after that does `latest` move (itself replaced atomically). A crash at any moment
therefore leaves `latest` on a complete checkpoint. Weights are safetensors; the optimizer state
is read back with torch.load(weights_only=True), which cannot run code. A training timestep
sampler with a state (the importance sampler's loss history [T, 10] and counts [T]) adds
timesteps.safetensors; state.json stays small.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from diffuse_cli.errors import UserError
from diffuse_cli.files import give_plain_file_mode

MODEL, EMA, OPTIMIZER, STATE = "model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"
TIMESTEPS = "timesteps.safetensors"
EMA_PROFILES = "ema_profiles.safetensors"  # trainer.ema=power: every tracked EMA
LATEST = "latest"
MOVED_ASIDE = ".old-"  # prefix of a step's earlier copy while that step is saved again
# What writing or reading a checkpoint file raises when the disk is full or the file is damaged:
# safetensors' own error is not an OSError, and torch.save reports a full disk as a RuntimeError.
FILE_ERRORS = (OSError, RuntimeError, ValueError, SafetensorError)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(folder)


def match_mode(folder: Path) -> None:
    """Every file in `folder` with the permissions of a plain file (files.give_plain_file_mode:
    safetensors writes 0600, which hides the weights from a group sharing the folder)."""
    for f in folder.iterdir():
        give_plain_file_mode(f)


def _restore_moved_aside(root: Path) -> None:
    """A crash while re-saving a step can leave that step's complete earlier copy under
    `.old-<name>` with nothing at `<name>`: put it back; drop it when `<name>` is there."""
    for old in root.glob(f"{MOVED_ASIDE}step_*"):
        final = root / old.name[len(MOVED_ASIDE) :]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(final)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict,
    ema_state: dict,
    optimizer_state: dict,
    state: dict,
    keep_last: int = 2,
    timestep_state: dict[str, torch.Tensor] | None = None,
    ema_profiles: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `step`, point `latest` at it, then prune all but the newest keep_last.

    `timestep_state` (tensors; written only when non-empty) is the training timestep sampler's;
    `ema_profiles` every power EMA of a trainer.ema=power run (ema.safetensors is the first).
    """
    root = checkpoint_root(run_dir)
    name = step_name(step)
    tmp = root / f".tmp-{name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):  # left by a crash inside an earlier save
            shutil.rmtree(stale, ignore_errors=True)
        _restore_moved_aside(root)
        tmp.mkdir()
        save_file(_contiguous(model_state), tmp / MODEL)
        save_file(_contiguous(ema_state), tmp / EMA)
        torch.save(optimizer_state, tmp / OPTIMIZER)
        if timestep_state:
            save_file(_contiguous(timestep_state), tmp / TIMESTEPS)
        if ema_profiles:
            save_file(_contiguous(ema_profiles), tmp / EMA_PROFILES)
        (tmp / STATE).write_text(json.dumps({"step": step, **state}, indent=2))
        match_mode(tmp)
        fsync_files(tmp)
    except FILE_ERRORS as err:  # e.g. no space left: only the temporary folder was touched
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"'{previous}' is intact" if previous else "there is no earlier checkpoint"
        reason = getattr(err, "strerror", None) or err
        raise UserError(
            f"could not write checkpoint {name} in '{root}' ({reason}); {kept}; "
            "fix the cause (free disk space, permissions) and run the same command to resume"
        ) from err
    final = root / name
    if final.exists():  # re-saving the same step: move the old one aside first
        old = root / f"{MOVED_ASIDE}{name}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    fsync_dir(root)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    os.replace(pointer, root / LATEST)
    fsync_dir(root)
    _prune(root, keep_last, keep=name)
    return final


def _step_folders(root: Path) -> list[Path]:
    """The step_N folders under `root`, oldest first by N (names outgrow their 8 digits past
    10^8 steps, so the name's order is not the step's)."""
    folders = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[5:]))


def _prune(root: Path, keep_last: int, keep: str) -> None:
    if keep_last <= 0:
        return
    for old in _step_folders(root)[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `latest` points at; None when the run has no checkpoint yet."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        for folder in (root / name, root / f"{MOVED_ASIDE}{name}"):  # see _restore_moved_aside
            if (folder / STATE).is_file():
                return folder
    complete = [p for p in _step_folders(root) if (p / STATE).is_file()]
    return complete[-1] if complete else None


def _unreadable(folder: Path, err: Exception) -> UserError:
    if not folder.exists():  # not damaged: a run still training pruned it meanwhile
        return UserError(
            f"checkpoint '{folder}' was removed while it was read (a run that is still "
            "training keeps only its newest trainer.keep_last checkpoints); run the command "
            "again for the latest, or pass checkpoint=<step> of a kept one"
        )
    return UserError(
        f"checkpoint '{folder}' cannot be read ({err}); it is damaged: move it out of "
        f"'{folder.parent}' to fall back to the checkpoint before it, then run the command again"
    )


def read_checkpoint(folder: Path) -> dict:
    """Everything in a checkpoint folder, as tensors on the CPU ("timesteps" is {} when the
    run's timestep sampler has no state, "ema_profiles" {} unless trainer.ema=power)."""
    try:
        state = json.loads((folder / STATE).read_text())
        int(state["step"])  # a state.json without its step cannot be resumed
        return {
            "model": load_file(folder / MODEL),
            "ema": load_file(folder / EMA),
            "optimizer": torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True),
            "state": state,
            "timesteps": load_file(folder / TIMESTEPS) if (folder / TIMESTEPS).is_file() else {},
            "ema_profiles": (
                load_file(folder / EMA_PROFILES) if (folder / EMA_PROFILES).is_file() else {}
            ),
        }
    except pickle.UnpicklingError as err:
        raise UserError(
            f"checkpoint '{folder}' holds pickled objects that are not plain tensors "
            "and was refused unread (loading it could run code)"
        ) from err
    except (*FILE_ERRORS, KeyError, TypeError) as err:
        raise _unreadable(folder, err) from err


def load_state_checked(module: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict with one readable message when the checkpoint is for another network."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("different shape", mismatched),
        ):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise UserError(
            f"{source} does not fit the configured model ({'; '.join(parts)}); "
            "was it trained with another model config?"
        )
    module.load_state_dict(state)


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(folder: Path) -> int:
    """The step of a checkpoint folder, also of its moved-aside copy."""
    return int(folder.name.removeprefix(MOVED_ASIDE)[len("step_") :])


def agreed_step(run_dir: str | Path, step: int | None = None, find=None) -> int:
    """The step of chosen_checkpoint(run_dir, step) (or of `find(run_dir, step)`, e.g. the EMA
    snapshot to reconstruct at), as the main process finds it, on every
    process: a run that is still training can save a newer checkpoint at any moment, and every
    process, and the report naming the checkpoint, must use the same weights. Only the main
    process looks, and its answer or its error goes to all, so they stop on the same line. (The
    step can still be pruned before a process reads it; that process stops, and the launcher
    stops the rest.)"""
    from diffuse_cli.distributed import broadcast_from_main, in_process_group

    answer = None
    if not in_process_group() or torch.distributed.get_rank() == 0:
        try:
            answer = find(run_dir, step) if find else step_of(chosen_checkpoint(run_dir, step))
        except UserError as err:
            answer = str(err)
    answer = broadcast_from_main(answer)
    if isinstance(answer, str):
        raise UserError(answer)
    return answer


def chosen_checkpoint(run_dir: str | Path, step: int | None = None) -> Path:
    """The checkpoint folder of `step` (None: the latest); a UserError naming the steps there
    are when it has none."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise UserError(
            f"the run in '{run_dir}' has no checkpoint yet; train it first "
            f"with `diffuse train run_dir={run_dir}`"
        )
    if step is None:
        return latest
    folder = checkpoint_root(run_dir) / step_name(step)
    aside = folder.with_name(f"{MOVED_ASIDE}{folder.name}")  # see _restore_moved_aside
    if not (folder / STATE).is_file() and (aside / STATE).is_file():
        folder = aside
    if not (folder / STATE).is_file():
        kept = ", ".join(str(step_of(p)) for p in _step_folders(aside.parent))
        raise UserError(
            f"checkpoint={step}: '{run_dir}' has no checkpoint of step {step}; it has steps "
            f"{kept} (trainer.keep_last=0 keeps every checkpoint)"
        )
    return folder


@dataclass(frozen=True)
class LoadedWeights:
    """Which weights a model holds: the checkpoint folder, its step, and the sha256 of the
    weights file's bytes that were loaded (one read: a step saved again or a run trained anew
    under the same step name shows as other weights)."""

    folder: Path
    step: int
    sha256: str


def load_weights(
    model: torch.nn.Module, run_dir: str | Path, ema: bool = True, step: int | None = None
) -> LoadedWeights:
    """Load the (EMA) weights of the checkpoint of `step` (None: the latest) into `model`."""
    folder = chosen_checkpoint(run_dir, step)
    path = folder / (EMA if ema else MODEL)
    try:
        data = path.read_bytes()
        state = load_safetensors(data)
        digest = hashlib.sha256(data).hexdigest()
        del data  # the tensors hold their own copy: do not keep both of a large model
        step = int(json.loads((folder / STATE).read_text())["step"])
    except (*FILE_ERRORS, KeyError, TypeError) as err:
        raise _unreadable(folder, err) from err
    load_state_checked(model, state, f"checkpoint '{path}'")
    return LoadedWeights(folder, step, digest)
