"""The `export` command: a run's checkpoint in another library's format, chosen by `format`."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from diffuse_cli.errors import UserError

FORMATS = ("diffusers",)


def export_command(cfg: DictConfig) -> None:
    """Write `cfg.run_dir`'s checkpoint to `cfg.out` in `cfg.format`, refusing a bad format or
    an `out` that holds files before anything is written."""
    from .diffusers_export import export_diffusers

    if OmegaConf.is_missing(cfg, "out"):
        raise UserError("say where to write the export: out=DIR (a new or empty folder)")
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is unknown; choose one of: {', '.join(FORMATS)}")
    out = export_diffusers(cfg.run_dir, cfg.out, ema=cfg.ema, step=cfg.checkpoint)
    weights = "EMA" if cfg.ema else "raw"
    print(
        f"exported {cfg.run_dir} ({weights} weights) to {out}: "
        f"diffusers.DDPMPipeline.from_pretrained('{out}')"
    )
