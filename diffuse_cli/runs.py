"""The run directory: where a run's config, checkpoints, metrics, samples and reports live.

<run_dir>/config.yaml          the resolved config the run trained with
<run_dir>/checkpoints/         step_XXXXXXXX/ folders and a `latest` pointer
<run_dir>/metrics.jsonl        one JSON object per logged step
<run_dir>/samples/             grids made during training; <tag>/ from `sample` (see README)
<run_dir>/eval/                JSON reports
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffuse_cli.config import EXECUTION_KEYS, MODEL_DEFINING, defining
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


def read_run_config(run_dir: str | Path, task: str = "diffusion") -> DictConfig:
    """The config a run trained with; a clear error when `run_dir` holds no run (saying how to
    train one of `task`)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        what = "classifier run" if task == "classifier" else "run"
        how = " task=classifier" if task == "classifier" else ""
        raise UserError(
            f"no {what} found in '{run_dir}' ({CONFIG_FILE} is missing); train one "
            f"with `diffuse train{how} run_dir={run_dir}` or point to another folder"
        )
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml's errors, or a file that is not text
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"'{path}' cannot be read ({first}); it is the run's config as diffuse train wrote "
            "it: restore it, or use another run_dir"
        ) from err
    if not isinstance(cfg, DictConfig) or not cfg:
        raise UserError(
            f"'{path}' holds no config; it is the run's config as diffuse train wrote it: "
            "restore it, or use another run_dir"
        )
    if "schedule" in cfg and "scale_betas" not in cfg.schedule:  # written before the key:
        s = cfg.schedule  # linear betas were taken as given, which scaling changes unless T=1000
        cfg.schedule.scale_betas = not (s.get("name") == "linear" and s.num_timesteps != 1000)
    if "data" in cfg and "subset" not in cfg.data:  # runs before the key: a capped image
        d = cfg.data  # folder kept its first files
        capped = d.get("name") == "image_folder" and (d.get("num_train") or d.get("num_test"))
        cfg.data.subset = "first" if capped else "evenly_spaced"
    if "model" in cfg and "rescale_timesteps" not in cfg.model:  # runs before the key: raw t
        cfg.model.rescale_timesteps = False
    if "loss" in cfg and "weighting" not in cfg.loss:  # runs before the key: L_simple unweighted
        cfg.loss.weighting = "uniform"
        cfg.loss.snr_gamma = cfg.loss.get("snr_gamma", 5.0)
    for key, value in CONVENTIONS_BEFORE_KEYS.items():  # runs from before these keys
        if "model" in cfg and key not in cfg.model:
            cfg.model[key] = value
    return cfg


# The model keys of foreign networks' conventions and what every run made before them computed.
CONVENTIONS_BEFORE_KEYS = {
    "norm_groups": None,
    "norm_eps": 1e-5,
    "freq_shift": 0.0,
    "downsample_padding": 1,
}


def differences(key: str, ours: dict, theirs: dict | None, label: str) -> str:
    """ "key.k=ours (label: theirs), ..." for every k where two versions of a config group
    differ: the one-line detail of the errors that refuse to mix runs."""
    theirs = theirs or {}
    return ", ".join(
        f"{key}.{k}={ours.get(k)!r} ({label}: {theirs.get(k)!r})"
        for k in sorted(set(ours) | set(theirs))
        if ours.get(k) != theirs.get(k)
    )


def overridden_keys(overrides: list[str]) -> set[str]:
    """Keys named on the command line: 'schedule.num_timesteps=10' -> 'schedule.num_timesteps'."""
    return {item.split("=", 1)[0].lstrip("+~") for item in overrides}


def with_run_config(
    cfg: DictConfig,
    run_dir: str | Path,
    also: tuple[str, ...] = (),
    verb: str = "use",
    overrides: list[str] | None = None,
) -> DictConfig:
    """`cfg` with its model-defining groups (and the groups in `also`, e.g. the loss an eval
    measures) taken from the run at `run_dir`.

    An explicit command-line override that disagrees with the run is refused: the checkpoint
    was trained for the run's values, so silently using others would be wrong. A group choice
    (`data=cifar10`) is compared whole, a key (`model.dropout=0.1`) alone, a preset
    (`experiment=...`) compares every group whole. Where the data are read from
    (EXECUTION_KEYS: data.root, data.num_workers, ...) is the run's unless the command line
    names it, and then it is the command's. `verb` says in the refusal what the command does
    with the run ("resume" for train); `overrides`: the command line (None: Hydra's).
    """
    run_cfg = read_run_config(run_dir)
    keys = overridden_keys(hydra_overrides() if overrides is None else overrides)
    merged = OmegaConf.to_container(cfg, resolve=True)
    for key in (*MODEL_DEFINING, *also):
        if key not in run_cfg:
            raise UserError(
                f"the run in '{run_dir}' has no '{key}' in {CONFIG_FILE}; "
                "it was not written by this version of diffuse"
            )
        ours, theirs = OmegaConf.to_container(cfg[key]), OmegaConf.to_container(run_cfg[key])
        if "experiment" in keys or any(k == key or k.startswith(f"{key}@") for k in keys):
            compared = defining(key, ours), defining(key, theirs)
        else:
            named = {k.split(".")[1] for k in keys if k.startswith(f"{key}.")}
            named -= set(EXECUTION_KEYS.get(key, ()))
            compared = ({k: ours.get(k) for k in named}, {k: theirs.get(k) for k in named})
        if compared[0] != compared[1]:
            raise UserError(
                f"{differences(key, *compared, 'run')}: the run in '{run_dir}' was trained "
                f"with other {key} settings; refusing to mix them: drop the override to "
                f"{verb} the run's own, or pick another run_dir"
            )
        access = {k: ours[k] for k in EXECUTION_KEYS.get(key, ()) if f"{key}.{k}" in keys}
        merged[key] = {**theirs, **access}
    merged["run_dir"] = str(run_dir)
    return OmegaConf.merge(cfg, merged)


def variant_name(cfg: DictConfig, stem: str) -> str:
    """`stem`, then `-step<n>` for a checkpoint asked for by step (checkpoint=n), `-ema<std>`
    for a reconstructed post-hoc EMA (ema_std=0.08: `-ema0.080`), `-raw` for an eval of the raw
    weights (eval.ema=false) and `-seed<n>` for a seed other than 0: the
    names of reports and sample folders, so that a sweep over checkpoints, weights or seeds
    never overwrites one result with another. Configs without an eval section (sample) always
    use the EMA weights."""
    name = stem if cfg.get("checkpoint") is None else f"{stem}-step{cfg.checkpoint}"
    name = name if cfg.get("ema_std") is None else f"{name}-ema{cfg.ema_std:.3f}"
    name = name if "eval" not in cfg or cfg.eval.ema else f"{name}-raw"
    return name if not cfg.get("seed") else f"{name}-seed{cfg.seed}"
