"""Writing eval reports: strict JSON, written atomically, so a crash never leaves half a file."""

import json
import math
from pathlib import Path

from diffuse_cli.files import write_atomically


def strict(value):
    """`value` with every non-finite float (a metric of too few samples, a diverged model)
    replaced by None: NaN and Infinity are not JSON, and strict readers refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(report: dict, path: Path) -> None:
    """Write `report` to `path` (folders made as needed) as strict JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(strict(report), indent=2, allow_nan=False))
