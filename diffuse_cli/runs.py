"""The run directory: where a run's config, checkpoints, metrics, samples and reports live.

<run_dir>/config.yaml          the resolved config the run trained with
<run_dir>/checkpoints/         step_XXXXXXXX/ folders and a `latest` pointer
<run_dir>/metrics.jsonl        one JSON object per logged step
<run_dir>/samples/             grids made during training; <sampler>-<steps>/ from `sample`
<run_dir>/eval/                JSON reports
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffuse_cli.config import MODEL_DEFINING
from diffuse_cli.errors import UserError

CONFIG_FILE = "config.yaml"


def hydra_output_dir() -> Path | None:
    """The job's output directory when running under Hydra (one per job in a sweep)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    out = Path(HydraConfig.get().runtime.output_dir)
    try:  # keep paths relative to where the command ran, as the user wrote them
        return out.relative_to(Path.cwd())
    except ValueError:
        return out


def hydra_overrides() -> list[str]:
    """The command-line overrides of this job (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def read_run_config(run_dir: str | Path) -> DictConfig:
    """The config a run trained with; a clear error when `run_dir` holds no run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserError(
            f"no run found in '{run_dir}' ({CONFIG_FILE} is missing); train one "
            f"with `diffuse train run_dir={run_dir}` or pass run_dir=<a run folder>"
        )
    return OmegaConf.load(path)


def differences(key: str, ours: dict, theirs: dict | None, label: str) -> str:
    """ "key.k=ours (label: theirs), ..." for every k where two versions of a config group
    differ: the one-line detail of the errors that refuse to mix runs."""
    theirs = theirs or {}
    return ", ".join(
        f"{key}.{k}={ours.get(k)!r} ({label}: {theirs.get(k)!r})"
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k) != theirs.get(k)
    )


def overridden_roots(overrides: list[str]) -> set[str]:
    """Top-level keys named on the command line: 'schedule.num_timesteps=10' -> 'schedule'."""
    roots = set()
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        roots.add(key.split(".", 1)[0].split("@", 1)[0])
    return roots


def with_run_config(cfg: DictConfig, run_dir: str | Path) -> DictConfig:
    """`cfg` with its model-defining groups taken from the run at `run_dir`.

    An explicit command-line override of such a group that disagrees with the run is refused:
    the checkpoint was trained for the run's values, so silently using others would be wrong.
    """
    run_cfg = read_run_config(run_dir)
    named = overridden_roots(hydra_overrides())
    merged = OmegaConf.to_container(cfg, resolve=True)
    for key in MODEL_DEFINING:
        if key not in run_cfg:
            raise UserError(
                f"the run in '{run_dir}' has no '{key}' in {CONFIG_FILE}; "
                "it was not written by this version of diffuse"
            )
        ours, theirs = OmegaConf.to_container(cfg[key]), OmegaConf.to_container(run_cfg[key])
        if key in named and ours != theirs:
            raise UserError(
                f"{differences(key, ours, theirs, 'run')}: the run in '{run_dir}' was trained "
                f"with other {key} settings; drop the override or pick another run_dir"
            )
        merged[key] = theirs
    merged["run_dir"] = str(run_dir)
    return OmegaConf.merge(cfg, merged)


def weights_name(cfg: DictConfig, stem: str) -> str:
    """`stem` for the EMA weights, `stem`-raw for an eval of the raw ones (eval.ema=false), so
    the reports of the two never overwrite each other; configs without an eval section (sample)
    always use the EMA weights."""
    return stem if "eval" not in cfg or cfg.eval.ema else f"{stem}-raw"
