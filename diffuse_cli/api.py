"""The public Python API: the functions the commands use (the run loaders of loading.py and the
builders of build.py, re-exported here) and compose_config, which composes as the CLI does.

import diffuse_cli as dc
cfg = dc.compose_config(["schedule=cosine", "sampler=ddim", "steps=50"], command="sample")
diffusion = dc.build_diffusion(cfg)
model = dc.build_model(cfg)
x0 = dc.sample(cfg, model, diffusion, noise=x_T, generator=g)
bpd = dc.nll_bpd(model, diffusion, x0_test, generator=g)["total"]
run_cfg, model, diffusion = dc.load_run("runs/default")   # the run's config, EMA weights
run_cfg, model, diffusion = dc.load_run("runs/power", ema_std=0.08)  # post-hoc EMA
*_, weights = dc.open_run("runs/default")                 # and which: weights.step, .sha256
clf_cfg, classifier = dc.load_classifier("runs/classifier")
cfg = dc.compose_config(["guidance=classifier", "guidance.scale=3"], command="sample")
guided, cond_fn = dc.build_guidance(cfg, model, diffusion, classifier)  # cfg.guidance
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from diffuse_cli.build import build_diffusion, build_guidance, build_model, sample
from diffuse_cli.errors import UserError
from diffuse_cli.evaluate.nll import nll_bpd
from diffuse_cli.loading import (
    load_classifier,
    load_run,
    open_classifier,
    open_classifier_everywhere,  # noqa: F401  (for callers of api; not in __all__)
    open_run,
)

__all__ = [
    "build_diffusion",
    "build_guidance",
    "build_model",
    "compose_config",
    "load_classifier",
    "load_run",
    "nll_bpd",
    "open_classifier",
    "open_run",
    "sample",
]


def compose_config(
    overrides: Sequence[str] = (), command: str = "train", *, check_keys: bool = True
) -> DictConfig:
    """Compose the config of `command` exactly as `diffuse <command> *overrides` would: a bad
    override, or a key the command does not read (`+key=value`), is a one-line UserError.
    `check_keys=False` keeps such keys (to inspect a config as Hydra makes it). A Hydra set
    up by the caller is left as it was."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from diffuse_cli.config import SCHEMAS, check_known_keys, register_configs

    if command not in SCHEMAS:
        raise UserError(f"unknown command '{command}'; choose one of: {', '.join(SCHEMAS)}")
    if isinstance(overrides, str):  # one override, not its characters
        overrides = [overrides]
    register_configs()
    callers = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("diffuse_cli.configs", version_base="1.3"):
            cfg = compose(config_name=command, overrides=list(overrides))
    except HydraException as err:
        raise UserError(_one_line(err)) from err
    finally:
        restore_gh_from_backup(callers)
    if check_keys:
        check_known_keys(cfg, command)
    return cfg


def _one_line(err: Exception) -> str:
    """Hydra's message and its cause's first line, in one line: 'Could not find
    'schedule/cosinee' (options: cosine, edm, linear, ncsn)', 'Error merging override
    trainer.max_steps=abc: Value 'abc' ... could not be converted to Integer'."""
    text = str(err).split("Config search path:")[0]
    head, _, options = text.partition("Available options in")
    head = " ".join(ln.strip() for ln in head.splitlines()
                    if ln.strip() and not ln.startswith("To append"))  # fmt: skip
    if options:
        head += " (options: " + ", ".join(o.strip() for o in options.splitlines()[1:] if o.strip())
        head += ")"
    cause = str(err.__cause__ or "").strip()
    return head.rstrip(".") + f": {cause.splitlines()[0]}" if cause else head
