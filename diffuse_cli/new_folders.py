"""The output folders a command made, so that a refused command leaves none of them behind.

Imports nothing from the package: the config package registers noting_new_folders as a
resolver, and the CLI removes the folders after a refused command.
"""

from __future__ import annotations

import os
from pathlib import Path

_NOTED: list[Path] = []  # output folders Hydra resolved, in order (a sweep's folder first)
_NEW: set[Path] = set()  # the folders of those paths that did not exist then


def noting_new_folders(path: str) -> str:
    """The resolver `${diffuse_new_folders:...}` around hydra.run.dir and hydra.sweep.dir.
    Hydra resolves them just before it makes the folders, so the folders of the path that are
    missing at the first resolution are this command's; a refused command removes those
    while they are empty (remove_new_folders), never a folder that was there before."""
    folder = _absolute(path)
    if folder not in _NOTED:
        _NOTED.append(folder)
        _NEW.update(f for f in (folder, *folder.parents) if not f.exists())
    return str(path)


def _absolute(path) -> Path:
    """The absolute path without `..`, as Hydra's runtime.output_dir spells it."""
    return Path(os.path.abspath(str(path)))


def is_new_folder(folder: Path) -> bool:
    """Whether this command made `folder` (see noting_new_folders)."""
    return _absolute(folder) in _NEW


def remove_new_folders(leftover: str | None = "multirun.yaml") -> None:
    """Remove the output folders this command made while they are empty, deepest first; a
    sweep's `leftover` (Hydra's record of the sweep, written before its first job) goes too when
    it is all that a new folder holds; None when a job of the sweep ran (it may have written
    elsewhere: `name=a,b`)."""
    for noted in reversed(_NOTED):
        try:
            if leftover and noted in _NEW and os.listdir(noted) == [leftover]:
                (noted / leftover).unlink()
        except OSError:  # gone, or not a folder
            pass
        for folder in (noted, *noted.parents):
            if folder not in _NEW:
                break
            try:
                folder.rmdir()
            except FileNotFoundError:  # removed already (the job's own clean-up): go up
                continue
            except OSError:  # not empty
                break
