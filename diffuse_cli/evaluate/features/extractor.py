"""`Extractor`, what every feature extractor returns, and `file_digest`, which names weights:
in a module of their own, so the extractors (inception.py) use them without importing the
package that chooses among the extractors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def file_digest(path: Path) -> str:
    """The first 8 hex digits of the file's sha256, read in blocks (Inception's are 92 MB)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:8]


@dataclass
class Extractor:
    name: str  # inception | builtin | ...: in metric names (fid or fd_<name>, ...)
    key: str  # name + weights digest: in cache file names
    implementation: dict  # {"implementation": ..., "version": ...} for the report
    extract: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # -> features, logits

    def metric_name(self, short: str) -> str:
        """'fd' -> 'fid' for Inception, 'fd_builtin' for the built-in extractor (and so on for
        kd, is, precision, recall): numbers of two feature spaces never share a name."""
        if self.name == "inception":
            return {"fd": "fid", "kd": "kid"}.get(short, short)
        return f"{short}_{self.name}"
