"""Config schemas and their registration with Hydra's ConfigStore."""

import dataclasses
import difflib
import hashlib
import typing

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from diffuse_cli.config.schema import EXECUTION_KEYS, MODEL_DEFINING, SCHEMAS

_registered = False


def register_configs() -> None:
    """Register `<command>_schema` for each command; the primary YAMLs list it first."""
    global _registered
    if _registered:
        return
    if not OmegaConf.has_resolver("diffuse_job_dir"):
        OmegaConf.register_new_resolver("diffuse_job_dir", job_dir_name)
    if not OmegaConf.has_resolver("diffuse_new_folders"):
        from diffuse_cli.new_folders import noting_new_folders

        OmegaConf.register_new_resolver("diffuse_new_folders", noting_new_folders)
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
    """A sweep job's folder: its overrides (`schedule=cosine`, '/' in values made '_'), or
    `<num>-<hash>` when those are longer than 100 characters (a path component has a limit)."""
    name = str(override_dirname).replace("/", "_")
    if name and len(name) <= 100:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{num}-{digest}" if name else str(num)


def defining(key: str, group: dict | None) -> dict | None:
    """Config group `key` without its EXECUTION_KEYS keys: what must match between a run and a
    command that uses it."""
    if group is None:
        return None
    return {k: v for k, v in group.items() if k not in EXECUTION_KEYS.get(key, ())}


def unknown_keys(cfg: DictConfig, schema: type, prefix: str = "") -> dict[str, str | None]:
    """Keys of `cfg` that its schema does not have, each with the nearest known key (or None).
    The schema refuses such keys when they are set, but a `+key=value` override (which Hydra
    suggests for a typo) adds them, and the run would silently ignore them."""
    fields = typing.get_type_hints(schema)
    found = {}
    for key, value in cfg.items_ex(resolve=False):
        path = f"{prefix}{key}"
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            found[path] = f"{prefix}{near[0]}" if near else None
        elif dataclasses.is_dataclass(fields[key]) and isinstance(value, DictConfig):
            found.update(unknown_keys(value, fields[key], f"{path}."))
    return found


def check_known_keys(cfg: DictConfig, command: str) -> None:
    """UserError naming the first key of `cfg` that `command` does not read."""
    from diffuse_cli.errors import UserError

    unknown = unknown_keys(cfg, SCHEMAS[command])
    if unknown:
        key, near = next(iter(unknown.items()))
        hint = f"did you mean {near}? " if near else ""
        raise UserError(
            f"{key} is not a setting of `diffuse {command}` ({hint}a `+` override adds keys "
            f"that nothing reads); `diffuse {command} --help` lists them"
        )


__all__ = [
    "EXECUTION_KEYS",
    "MODEL_DEFINING",
    "SCHEMAS",
    "check_known_keys",
    "defining",
    "register_configs",
    "unknown_keys",
]
