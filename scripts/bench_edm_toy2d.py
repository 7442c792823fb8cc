"""The EDM formulation against the classic recipe on two moons, at equal training steps and
network evaluations.

Trains experiment=toy2d (linear betas, eps prediction, L_simple) and experiment=edm_toy2d (the
same MLP, data and trainer with schedule=edm) for --steps steps each, then draws --samples
points from each EMA model with each sampler of ROWS (no clipping) and prints the energy
distance to held-out moons (`diffuse eval metrics=[energy]`) as a Markdown table. The measured
table is in docs/benchmarks/edm_toy2d.md.

    python scripts/bench_edm_toy2d.py [--steps 3000] [--samples 2000] [--out runs/bench_edm]
"""

import argparse
import json
from pathlib import Path

import diffuse_cli as dc
from diffuse_cli.evaluate.command import eval_command
from diffuse_cli.train.trainer import train

RECIPES = ("toy2d", "edm_toy2d")
# (label, overrides): 35 network evaluations each
ROWS = [
    ("heun, 18 steps (karras)", ["sampler=heun", "steps=18"]),
    ("euler, 35 steps (karras)", ["sampler=euler", "steps=35"]),
    ("dpm_solver 2M, 35 steps (logsnr)", ["sampler=dpm_solver", "steps=35"]),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--out", default="runs/bench_edm")
    args = parser.parse_args()
    table = {}
    for recipe in RECIPES:
        run_dir = Path(args.out) / recipe
        overrides = [f"experiment={recipe}", f"trainer.max_steps={args.steps}"]
        overrides += [f"run_dir={run_dir}", "trainer.progress=false", "trainer.sample_num=0"]
        train(dc.compose_config(overrides, "train"))
        for label, options in ROWS:
            cfg = dc.compose_config(
                [f"run_dir={run_dir}", "metrics=[energy]", "sampler.clip_denoised=false"]
                + [f"eval.num_samples={args.samples}", "progress=false", *options],
                "eval",
            )
            (path,) = eval_command(cfg)
            table[label, recipe] = json.loads(Path(path).read_text())["metrics"]["energy"]
    print(f"energy distance to held-out moons, {args.samples} samples, {args.steps} steps\n")
    print("| sampler (35 evaluations) | " + " | ".join(RECIPES) + " |")
    print("| --- |" + " --- |" * len(RECIPES))
    for label, _ in ROWS:
        print(f"| {label} | " + " | ".join(f"{table[label, r]:.4f}" for r in RECIPES) + " |")


if __name__ == "__main__":
    main()
