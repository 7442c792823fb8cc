"""Training recipes at equal training steps and network evaluations: distance to the data.

Each recipe is a list of overrides on top of `experiment=toy2d` (the MLP on two moons). Every
recipe trains for the same `--steps` with each seed in `--seeds`, then `diffuse eval
metrics=[swd,energy]` draws `--samples` points with each sampler of `--samplers` (sample i
seeded by i, so every run starts from the same x_T; `--no-clip` leaves x0 unclipped) and
compares them with fresh data points. Prints the mean and spread over seeds as Markdown tables;
the measured ones and what they show are in docs/benchmarks/recipes.md and, for the EDM
formulation early in training, docs/benchmarks/edm_toy2d.md. Runs go to `--out`; running the
script again resumes unfinished runs and reads back the evaluations already made of finished
ones.

    python scripts/bench_recipes.py [--recipes classic,min_snr_eps] [--seeds 0,1,2]
        [--steps 3000] [--samples 4000] [--samplers dpm_solver:10,heun:13] [--no-clip]
        [--threads 1] [--out runs/bench_recipes]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from diffuse_cli.data.toy2d import TOY_SETS
from diffuse_cli.evaluate.distances import energy_distance, sliced_wasserstein

# name: overrides on top of experiment=toy2d (eps prediction, L_simple, linear betas, T = 1000)
RECIPES = {
    "classic": [],
    "v": ["prediction=v"],
    "min_snr_eps": ["loss.weighting=min_snr"],
    "min_snr_v": ["prediction=v", "loss.weighting=min_snr"],
    "edm_weighting_v": ["prediction=v", "loss.weighting=edm"],
    # Karras et al. 2022; with experiment=toy2d, the settings of experiment=edm_toy2d
    "edm": ["schedule=edm", "prediction=edm", "loss.weighting=edm"],
}
DEFAULT_RECIPES = "classic,v,min_snr_eps,min_snr_v"
# sampler:steps, each at its own default spacing; heun costs 2 steps - 1 evaluations
DEFAULT_SAMPLERS = "dpm_solver:10,dpm_solver:25,heun:13"
METRICS = ("energy", "swd")


def diffuse(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("WANDB_MODE", "disabled")
    cmd = [sys.executable, "-m", "diffuse_cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def parse_samplers(text: str) -> list[tuple[str, int]]:
    """'dpm_solver:10,heun:13' -> [("dpm_solver", 10), ("heun", 13)]."""
    pairs = [item.split(":") for item in text.split(",")]
    if any(len(pair) != 2 or not pair[1].isdigit() for pair in pairs):
        raise SystemExit(f"--samplers takes sampler:steps pairs, e.g. {DEFAULT_SAMPLERS}")
    return [(name, int(steps)) for name, steps in pairs]


def report_path(run_dir: Path, sampler: str, steps: int, args) -> Path:
    """Where `diffuse eval` writes the report of this sampler setting (generate.sampler_tag)."""
    tag = f"{sampler}-{steps}" + ("-no_clip_denoised" if args.no_clip else "")
    return run_dir / "eval" / tag / "points.json"


def finished_report(path: Path, args) -> dict | None:
    """The eval report at `path` if it measured this benchmark's step count and sample count."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    wanted = report["checkpoint_step"] == args.steps and report["num_samples"] == args.samples
    return report if wanted else None


def train_and_eval(recipe: str, seed: int, args) -> dict:
    """{(sampler, steps): {"metrics", "nfe"}} for one recipe and training seed; evaluations
    already made of the finished run are read back, not repeated."""
    run_dir = Path(args.out) / f"{recipe}-seed{seed}"
    reports = {key: report_path(run_dir, *key, args) for key in args.samplers}
    if not all(finished_report(path, args) for path in reports.values()):
        train = ["experiment=toy2d", *RECIPES[recipe], f"seed={seed}", f"run_dir={run_dir}"]
        train += [f"trainer.max_steps={args.steps}", "trainer.progress=false"]
        diffuse("train", *train, threads=args.threads)
    results = {}
    for (sampler, steps), path in reports.items():
        if not finished_report(path, args):
            diffuse(
                "eval",
                f"run_dir={run_dir}",
                "metrics=[swd,energy]",
                f"sampler={sampler}",
                f"steps={steps}",
                f"eval.num_samples={args.samples}",
                *(["sampler.clip_denoised=false"] if args.no_clip else []),
                "progress=false",
                threads=args.threads,
            )
        report = finished_report(path, args)
        results[(sampler, steps)] = {"metrics": report["metrics"], "nfe": report["nfe_per_sample"]}
    return results


def data_floor(samples: int, seeds: int = 3) -> dict:
    """The metrics between two independent draws of the data: what a perfect model scores."""
    draw = TOY_SETS["moons"][0]
    out = {m: [] for m in METRICS}
    for s in range(seeds):
        a, _ = draw(np.random.default_rng([1000 + s, 0]), samples)
        b, _ = draw(np.random.default_rng([1000 + s, 1]), samples)
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
        out["energy"].append(energy_distance(a, b))
        out["swd"].append(sliced_wasserstein(a, b, 1000, seed=s))
    return out


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2e}"
    return f"{statistics.mean(values):.2e} ± {statistics.stdev(values):.1e}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS, help="sampler:steps,...")
    parser.add_argument("--no-clip", action="store_true", help="sample with x0 unclipped")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_recipes")
    args = parser.parse_args()
    args.samplers = parse_samplers(args.samplers)
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)

    print(
        f"host: {platform.node()} ({platform.processor() or platform.machine()}), "
        f"{args.threads} thread(s); python {platform.python_version()}, torch {torch.__version__}"
    )
    print(f"command: python scripts/bench_recipes.py {' '.join(sys.argv[1:])}\n")
    results = {}
    for seed in seeds:  # every recipe once before the next seed: a cut-short run stays fair
        for recipe in recipes:
            results[recipe, seed] = train_and_eval(recipe, seed, args)
            print(f"done: {recipe} seed {seed}", file=sys.stderr, flush=True)
    floor = data_floor(args.samples)
    for metric in METRICS:
        head = [
            f"{s} {n} ({results[recipes[0], seeds[0]][s, n]['nfe']} NFE)" for s, n in args.samplers
        ]
        spread = f"mean ± std over seeds {args.seeds}; data vs data: {cell(floor[metric])}"
        print(f"### {metric} ({spread})\n")
        print("| recipe | overrides | " + " | ".join(head) + " |")
        print("| --- | --- |" + " --- |" * len(args.samplers))
        for recipe in recipes:
            cells = [
                cell([results[recipe, s][key]["metrics"][metric] for s in seeds])
                for key in args.samplers
            ]
            overrides = " ".join(RECIPES[recipe]) or "(experiment=toy2d)"
            print(f"| {recipe} | `{overrides}` | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
