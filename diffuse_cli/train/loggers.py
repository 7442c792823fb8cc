"""Where training metrics go: always <run_dir>/metrics.jsonl, and wandb when logger=wandb."""

from __future__ import annotations

import json
import math
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from diffuse_cli.errors import UserError
from diffuse_cli.files import write_atomically


class MetricsFile:
    """Appends one JSON object per logged step; survives crashes because each line is flushed."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        if path.exists():  # on resume, drop lines from steps after the checkpoint
            kept = [
                ln
                for ln in path.read_text(errors="replace").splitlines()  # damaged lines go
                if ln.strip() and _step_of(ln) is not None and _step_of(ln) <= start_step
            ]
            write_atomically(path, "".join(ln + "\n" for ln in kept))

    def log(self, metrics: dict) -> None:
        """One line of strict JSON: a non-finite number (a skipped step's gradient norm) is
        written as null, since NaN and Infinity are not JSON and break strict readers."""
        finite = {k: None if _non_finite(v) else v for k, v in metrics.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(finite, allow_nan=False) + "\n")


def _non_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def wandb_logged_in() -> bool:
    """True when wandb has an API key (environment or netrc), checked without prompting."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def check_logger(cfg: DictConfig) -> None:
    """Refuse a logger setting that would fail, before the run directory is touched."""
    lg = cfg.logger
    if lg.name not in ("none", "wandb"):
        raise UserError(f"logger={lg.name!r} is unknown; choose none or wandb")
    if lg.name != "wandb":
        return
    if lg.mode not in ("online", "offline"):
        raise UserError(f"logger.mode={lg.mode!r} must be online or offline")
    if lg.mode == "online" and not wandb_logged_in():
        raise UserError(
            "wandb is not logged in; run `wandb login`, set WANDB_API_KEY, or "
            "train with logger.mode=offline and `wandb sync` later"
        )


class WandbLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path, resuming: bool):
        """Built by make_logger, which has checked the settings and the login."""
        lg = cfg.logger
        import wandb

        self.run = wandb.init(
            project=lg.project,
            entity=lg.entity,
            mode=lg.mode,
            name=cfg.name,
            dir=str(run_dir),
            tags=list(lg.tags),
            id=wandb_run_id(run_dir, resuming),
            resume="allow",
            config=OmegaConf.to_container(cfg, resolve=True),
        )

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        self.run.finish()


WANDB_ID = Path("wandb") / "run_id"


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The wandb run of this run directory: kept in <run_dir>/wandb/run_id, so a resumed
    training continues its wandb run, and a fresh one (a new run in a reused or re-created
    folder) starts a new wandb run instead of appending to, and losing steps in, an old one."""
    import secrets

    path = run_dir / WANDB_ID
    if resuming and path.is_file():
        return path.read_text().strip()
    if resuming:  # runs from before the id was kept: their id came from the folder's path
        import hashlib

        return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    run_id = secrets.token_hex(8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class NoLogger:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_image(self, key: str, path: Path, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


def make_logger(cfg: DictConfig, run_dir: Path, resuming: bool = False):
    """The logger of `cfg`; `resuming`: the run continues from a checkpoint."""
    check_logger(cfg)
    return WandbLogger(cfg, run_dir, resuming) if cfg.logger.name == "wandb" else NoLogger()
