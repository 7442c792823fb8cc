"""Where training metrics go: always <run_dir>/metrics.jsonl, and wandb when logger=wandb."""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from diffuse_cli.errors import UserError


class MetricsFile:
    """Appends one JSON object per logged step; survives crashes because each line is flushed."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        if path.exists():  # on resume, drop lines from steps after the checkpoint
            kept = [
                ln
                for ln in path.read_text().splitlines()
                if ln.strip() and _step_of(ln) is not None and _step_of(ln) <= start_step
            ]
            path.write_text("".join(ln + "\n" for ln in kept))

    def log(self, metrics: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")


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


class WandbLogger:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        lg = cfg.logger
        if lg.mode not in ("online", "offline"):
            raise UserError(f"logger.mode={lg.mode!r} must be online or offline")
        if lg.mode == "online" and not wandb_logged_in():
            raise UserError(
                "wandb is not logged in; run `wandb login`, set WANDB_API_KEY, or "
                "train with logger.mode=offline and `wandb sync` later"
            )
        import wandb

        self.run = wandb.init(
            project=lg.project,
            entity=lg.entity,
            mode=lg.mode,
            name=cfg.name,
            dir=str(run_dir),
            tags=list(lg.tags),
            id=_stable_id(run_dir),
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


def _stable_id(run_dir: Path) -> str:
    """One wandb run per run directory, so a resumed training continues the same wandb run."""
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]


class NoLogger:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_image(self, key: str, path: Path, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


def make_logger(cfg: DictConfig, run_dir: Path):
    if cfg.logger.name == "wandb":
        return WandbLogger(cfg, run_dir)
    if cfg.logger.name == "none":
        return NoLogger()
    raise UserError(f"logger={cfg.logger.name!r} is unknown; choose none or wandb")
