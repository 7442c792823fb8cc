"""Time the newcomer path: `diffuse train` (the embedded default) then `diffuse sample`.

    python scripts/time_default_run.py [--workdir DIR] [extra train overrides ...]

Runs both commands in a fresh folder as subprocesses and prints the wall time of each, the
training throughput from metrics.jsonl, and where the grid is. Target on 2 CPU cores: under
5 minutes in all, with a grid that resembles the data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "diffuse_cli", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    args, overrides = parser.parse_known_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="diffuse-default-"))
    workdir.mkdir(parents=True, exist_ok=True)
    train_s = timed(["train", "trainer.progress=false", *overrides], workdir)
    sample_s = timed(["sample", "sampler=ddpm", "steps=100", "progress=false"], workdir)
    run = workdir / "runs" / "default"
    rates = [json.loads(x)["img_per_s"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    print("| phase | seconds |\n| --- | --- |")
    print(
        f"| diffuse train | {train_s:.0f} |\n| diffuse sample sampler=ddpm steps=100 | "
        f"{sample_s:.0f} |\n| total | {train_s + sample_s:.0f} |"
    )
    print(f"median training throughput: {statistics.median(rates):.0f} img/s")
    print(f"grid: {run / 'samples' / 'ddpm-100' / 'grid.png'}")


if __name__ == "__main__":
    main()
