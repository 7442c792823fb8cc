"""Distance to the exact mixture against network evaluations, for every sampler.

Each sampler is driven by the exact model of a 2-D Gaussian mixture in
tests/oracles/mixture_oracle.py (linear schedule, T = 1000, eps prediction, no clipping), from
the same x_T, and its samples are compared with fresh mixture samples by the unbiased energy
distance (noise ~5e-4 at n = 2000).
--mixture broad triples the components' standard deviations (mixture_oracle.MIXTURES).
The step count is chosen so the evaluations do not exceed each budget (heun: 2 steps - 1; pc:
steps + (steps - 1) corrector steps). Prints a Markdown table; the measured one and what it
shows are in docs/benchmarks/samplers.md.

    python scripts/bench_samplers.py [--n 2000] [--seed 0] [--mixture narrow|broad]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "oracles"))
from mixture_oracle import MIXTURES, MixtureOracle, energy_distance  # noqa: E402

from diffuse_cli.diffusion import GaussianDiffusion, get_betas  # noqa: E402
from diffuse_cli.samplers import NFECounter, get_sampler  # noqa: E402

BUDGETS = (5, 10, 20, 50, 100)
# (label, sampler, spacing, options, steps for a budget of n evaluations)
ROWS = [
    ("ddpm (even)", "ddpm", "even", {}, lambda n: n),
    ("ddim (even)", "ddim", "even", {}, lambda n: n),
    ("ddim (trailing)", "ddim", "trailing", {}, lambda n: n),
    ("euler (karras)", "euler", "karras", {}, lambda n: n),
    ("euler (logsnr)", "euler", "logsnr", {}, lambda n: n),
    ("heun (karras)", "heun", "karras", {}, lambda n: (n + 1) // 2),
    ("heun (logsnr)", "heun", "logsnr", {}, lambda n: (n + 1) // 2),
    ("dpm_solver 2M (logsnr)", "dpm_solver", "logsnr", {}, lambda n: n),
    ("dpm_solver 2M (trailing)", "dpm_solver", "trailing", {}, lambda n: n),
    ("pc ddpm+1 (even)", "pc", "even", {}, lambda n: (n + 1) // 2),
    ("pc ddim+1 (even)", "pc", "even", {"predictor": "ddim"}, lambda n: (n + 1) // 2),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixture", choices=sorted(MIXTURES), default="narrow")
    args = parser.parse_args()
    diffusion = GaussianDiffusion(get_betas("linear", 1000))
    oracle = MixtureOracle(diffusion.alphas_cumprod, spread=MIXTURES[args.mixture])
    g = torch.Generator().manual_seed(args.seed)
    ref = oracle.sample_data(args.n, g)
    floor = energy_distance(oracle.sample_data(args.n, g), ref)
    x_T = torch.randn(args.n, 2, generator=g)
    print(
        f"energy distance to {args.n} samples of the {args.mixture} mixture "
        f"(another {args.n}: {floor:.1e})\n"
    )
    print("| sampler | " + " | ".join(f"{n} NFE" for n in BUDGETS) + " |")
    print("| --- |" + " --- |" * len(BUDGETS))
    for label, name, spacing, options, steps_for in ROWS:
        cells = []
        for budget in BUDGETS:
            counted = NFECounter(oracle)
            noise = torch.Generator().manual_seed(args.seed + 1)
            x = get_sampler(name)(
                counted,
                diffusion,
                x_T,
                steps=steps_for(budget),
                noise=noise,
                spacing=spacing,
                clip_denoised=False,
                **options,
            )
            nfe = "" if counted.calls == budget else f" ({counted.calls})"
            cells.append(f"{energy_distance(x, ref):.1e}{nfe}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
