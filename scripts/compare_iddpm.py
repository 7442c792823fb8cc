"""Held-out bits/dim of DDPM's setup against improved DDPM's on the embedded data.

    python scripts/compare_iddpm.py [--steps 1000] [--nll-examples 64] [--workdir DIR]
                                    [extra overrides for both runs ...]

Trains two runs with the same small UNet (model=small), data, seed, T and number of steps:

    ddpm:   loss=simple  variance=fixed_small    schedule=linear
    iddpm:  loss=hybrid  variance=learned_range  schedule=cosine

then evaluates each with `diffuse eval metrics=[nll]` on the same first N held-out images (the
full T-step bound, same per-image noise) and prints a Markdown table: bits/dim with its standard
error over images, the prior and decoder terms, the final training loss and the wall times.
Nichol & Dhariwal 2021 (Table 1-2) find the second setting better in NLL; this measures it at
CPU scale. Each run takes a few minutes on 2 CPU cores at the default 1000 steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUPS = {
    "ddpm": ["loss=simple", "variance=fixed_small", "schedule=linear"],
    "iddpm": ["loss=hybrid", "variance=learned_range", "schedule=cosine"],
}


def run(args: list[str], cwd: Path) -> float:
    """`diffuse <args>` in cwd; returns the wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffuse_cli", *args], cwd=cwd, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each run")
    parser.add_argument("--nll-examples", type=int, default=64, help="held-out images")
    parser.add_argument("--workdir", type=Path, default=None)
    args, overrides = parser.parse_known_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="diffuse-compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, setup in SETUPS.items():
        run_dir = f"runs/{name}"
        common = [*setup, f"run_dir={run_dir}", *overrides]
        train_s = run(
            ["train", *common, f"trainer.max_steps={args.steps}", "trainer.progress=false"],
            workdir,
        )
        eval_s = run(
            [
                "eval",
                f"run_dir={run_dir}",
                "metrics=[nll]",
                f"eval.nll_examples={args.nll_examples}",
                f"eval.batch_size={args.nll_examples}",
                "progress=false",
            ],
            workdir,
        )
        report = json.loads((workdir / run_dir / "eval" / "nll.json").read_text())
        metrics = (workdir / run_dir / "metrics.jsonl").read_text().splitlines()
        rows.append(
            {
                "setup": name,
                "overrides": " ".join(setup),
                "bpd": report["bpd"],
                "bpd_stderr": report["bpd_stderr"],
                "prior_bpd": report["prior_bpd"],
                "decoder_bpd": report["decoder_bpd"],
                "final_train_loss": json.loads(metrics[-1])["loss"],
                "train_seconds": train_s,
                "eval_seconds": eval_s,
                "num_examples": report["num_examples"],
                "num_timesteps": report["num_timesteps"],
            }
        )
    (workdir / "compare_iddpm.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{args.steps} steps each, {rows[0]['num_examples']} held-out images, T = "
          f"{rows[0]['num_timesteps']}; results in {workdir}\n")  # fmt: skip
    print("| setup | bits/dim | prior | decoder L_0 | final train loss | train s | eval s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['overrides']} | {r['bpd']:.3f} ± {r['bpd_stderr']:.3f} | {r['prior_bpd']:.2e} "
            f"| {r['decoder_bpd']:.3f} | {r['final_train_loss']:.4f} | {r['train_seconds']:.0f} "
            f"| {r['eval_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
