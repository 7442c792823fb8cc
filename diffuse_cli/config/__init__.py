"""Config schemas and their registration with Hydra's ConfigStore."""

import hashlib

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from diffuse_cli.config.schema import MODEL_DEFINING, SCHEMAS

_registered = False


def register_configs() -> None:
    """Register `<command>_schema` for each command; the primary YAMLs list it first."""
    global _registered
    if _registered:
        return
    if not OmegaConf.has_resolver("diffuse_job_dir"):
        OmegaConf.register_new_resolver("diffuse_job_dir", job_dir_name)
    if not OmegaConf.has_resolver("diffuse_run_name"):
        OmegaConf.register_new_resolver("diffuse_run_name", default_run_name)
    cs = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        cs.store(name=f"{command}_schema", node=schema)
    _registered = True


def default_run_name(task: str) -> str:
    """A classifier trains beside the diffusion run it guides, not into it."""
    return "default" if task == "diffusion" else str(task)


def job_dir_name(num: int, override_dirname: str) -> str:
    """A sweep job's folder: its overrides (`schedule=cosine`), or `<num>-<hash>` when those
    would make a path component too long or nested."""
    name = str(override_dirname).replace("/", "_")
    if name and len(name) <= 100:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{num}-{digest}" if name else str(num)


__all__ = ["MODEL_DEFINING", "SCHEMAS", "register_configs"]
