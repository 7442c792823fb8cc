"""Writing eval reports: atomically, so a crash never leaves half a JSON file behind."""

import json
import os
from pathlib import Path


def write_json(report: dict, path: Path) -> None:
    """Write `report` to `path` (folders made as needed) via a temporary file and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
