"""Shared fixtures: configs composed exactly as the CLI composes them, and CLI runners."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import diffuse_cli as dc

# DIFFUSE_TEST_DEVICE=cuda runs the tests marked `cuda` on the GPU (`pytest -m cuda`): `sample` and
# `eval` commands get device=cuda, and training takes the GPU through Accelerate, as for a user.
# Without a GPU the run stops at once instead of passing on the CPU.
TEST_DEVICE = os.environ.get("DIFFUSE_TEST_DEVICE", "")
DEVICE_COMMANDS = ("sample", "eval")  # the commands with a `device` key


def pytest_configure(config):
    if TEST_DEVICE not in ("", "cuda"):
        raise pytest.UsageError(f"DIFFUSE_TEST_DEVICE={TEST_DEVICE!r}: use cuda, or leave it unset")
    if TEST_DEVICE == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("DIFFUSE_TEST_DEVICE=cuda, but torch sees no CUDA GPU")


def device_overrides(args: tuple[str, ...] | list[str]) -> list[str]:
    """The `device=` override DIFFUSE_TEST_DEVICE adds to a command (none where it is given)."""
    if not TEST_DEVICE or not args or args[0] not in DEVICE_COMMANDS:
        return []
    if any(a.startswith("device=") for a in args):
        return []
    return [f"device={TEST_DEVICE}"]


# A run small enough to train, sample and evaluate in seconds on a CPU.
TINY = [
    "model.model_channels=16",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[8]",
    "data.image_size=16",
    "data.num_train=64",
    "data.num_test=32",
    "schedule.num_timesteps=50",
    "trainer.batch_size=8",
    "trainer.max_steps=4",
    "trainer.log_every=2",
    "trainer.ckpt_every=2",
    "trainer.sample_every=4",
    "trainer.sample_num=4",
    "trainer.sample_steps=5",
    "trainer.warmup_steps=2",
    "trainer.progress=false",
]
# TINY at the built-in feature extractor's 32x32 (attention at 16 px): for sample-quality evals
TINY32 = [
    *(o for o in TINY if not o.startswith(("data.image_size", "model.attention"))),
    "model.attention_resolutions=[16]",
]


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder`: equal before and after means nothing changed.
    The run lock's file is left out: it names whichever process last took the lock."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture
def compose():
    """compose(overrides, command) -> the config `diffuse <command> *overrides` would use."""

    def _compose(overrides=(), command="train"):
        return dc.compose_config(list(overrides), command=command)

    return _compose


def run_cli(*args: str, cwd: Path, check: bool = True, env: dict | None = None):
    """Run `diffuse <args>` in a subprocess, as a user would; returns CompletedProcess."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled"}
    full_env.pop("WANDB_API_KEY", None)
    for key, value in (env or {}).items():  # None removes a variable
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    proc = subprocess.run(
        [sys.executable, "-m", "diffuse_cli", *args, *device_overrides(args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"diffuse {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_cli_in_process(*args: str, cwd: Path, check: bool = True, env: dict | None = None):
    """Run `diffuse <args>` as run_cli does, through the console script's own function
    (diffuse_cli.cli.main) in this process: the same composition, checks, messages and exit
    status without starting Python and importing torch again. For tests of what a command
    does; what only a process shows (signals, locks held by another process, a sweep's
    shared state) stays with run_cli. The state one command leaves behind (the working folder,
    argv, environment, Hydra's and the CLI's globals, the root logger) is put back."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from diffuse_cli import cli, new_folders

    variables = {"HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled", "WANDB_API_KEY": None}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**variables, **(env or {})}.items():  # None removes a variable
            if value is None:
                mp.delenv(key, raising=False)
            else:
                mp.setenv(key, value)
        mp.chdir(cwd)
        mp.setattr(sys, "argv", list(sys.argv))
        mp.setattr(cli, "_STARTED", time.time())
        mp.setattr(cli, "_JOBS_DONE", 0)
        mp.setattr(new_folders, "_NOTED", [])
        mp.setattr(new_folders, "_NEW", set())
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                cli.main([*args, *device_overrides(args)])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        finally:
            HydraConfig.instance().cfg = None
            GlobalHydra.instance().clear()
            root.handlers[:], root.level = handlers, level
    proc = subprocess.CompletedProcess(["diffuse", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(
            f"diffuse {' '.join(args)} failed ({code}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def cli(tmp_path):
    """cli(*args, check=True) runs the CLI in a fresh working folder."""

    def _cli(*args, check=True, env=None):
        return run_cli(*args, cwd=tmp_path, check=check, env=env)

    _cli.cwd = tmp_path
    return _cli
