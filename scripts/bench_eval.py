"""Sample quality of the default quickstart run on the embedded data, and the floor it is read
against, with the built-in extractor.

    python scripts/bench_eval.py [--workdir DIR] [--train] [--sweep] [--steps 10,20,50,100]
                                 [--sweep-samples 1000] [--cpu-threads N]

In --workdir (default: a new temporary folder):

1. with --train, `diffuse train` (the README's quickstart run, runs/default);
2. `diffuse eval metrics=[fid,kid,is,pr] sampler=ddpm steps=100` (the quickstart's sampler):
   1000 samples against the 1000 held-out (test split) images;
3. the floor: the same numbers between data and data: the two halves of the held-out split
   (500 vs 500), and 1000 training images against the held-out split (1000 vs 1000, the same
   sizes as the samples);
4. with --sweep, `diffuse eval -m sampler=ddim,ddpm steps=<--steps> metrics=[fid,is,pr]
   eval.num_samples=<--sweep-samples>` and `diffuse report`;
5. with --cpu-threads N, step 2 again on the CPU with N threads (device=cpu), for the wall time
   of eval on a small machine.

Prints a Markdown summary and writes it to <workdir>/bench_eval.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EVAL = ["eval", "metrics=[fid,kid,is,pr]", "sampler=ddpm", "steps=100", "progress=false"]


def diffuse(args: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """`diffuse <args>` in cwd; returns (wall, CPU) seconds. On a shared machine the CPU time
    (user + system, all threads) is the steadier number."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "diffuse_cli", *args], cwd=cwd, check=True,
                   env={**os.environ, **(env or {})})  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.perf_counter() - start, cpu


def data_floor(workdir: Path) -> list[dict]:
    """The metrics between two sets of real images, through the same code and settings as eval
    (KID subsets, IS splits and seed, k of precision/recall)."""
    import diffuse_cli as dc
    from diffuse_cli.build import build_data
    from diffuse_cli.diffusion import quantize
    from diffuse_cli.evaluate import distances as D
    from diffuse_cli.evaluate.features import build_extractor

    cfg = dc.compose_config([], "eval")
    extractor = build_extractor(cfg, torch.device("cpu"))

    def features(split: str, num: int):
        data = build_data(cfg, split)
        x = torch.stack([data[i][0] for i in range(num)])
        with torch.no_grad():
            parts = [extractor.extract(chunk) for chunk in quantize(x).split(250)]
        return torch.cat([f for f, _ in parts]), torch.cat([lg for _, lg in parts])

    test_f, test_l = features("test", 1000)
    train_f, train_l = features("train", 1000)
    ec, rows = cfg.eval, []
    for name, (a, la), b in [  # a plays the samples, b the reference, as in eval
        ("held-out first half (500) vs second half (500)", (test_f[:500], test_l[:500]),
         test_f[500:]),
        ("train 1000 vs held-out 1000", (train_f, train_l), test_f),
    ]:  # fmt: skip
        kd = D.kernel_distance(a, b, ec.kid_subsets, ec.kid_subset_size, seed=cfg.seed)
        pr = D.precision_recall(a, b, ec.pr_neighborhood)
        rows.append({
            "pair": name,
            "fd_builtin": D.frechet_distance(D.feature_statistics(a), D.feature_statistics(b)),
            "kd_builtin": kd["mean"],
            "is_builtin": D.inception_score(la, ec.is_splits, seed=cfg.seed)["mean"],
            "precision_builtin": pr["precision"],
            "recall_builtin": pr["recall"],
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--train", action="store_true", help="train the quickstart run first")
    parser.add_argument("--sweep", action="store_true", help="sampler x steps sweep + report")
    parser.add_argument("--steps", default="10,20,50,100", help="the sweep's steps")
    parser.add_argument("--sweep-samples", type=int, default=1000, help="samples per sweep job")
    parser.add_argument("--cpu-threads", type=int, default=0, help="also time eval on the CPU")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="diffuse-bench-eval-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"]
    if args.train:
        wall, cpu = diffuse(["train", "trainer.progress=false"], workdir)
        lines.append(f"train (quickstart, 1000 steps): {wall:.0f} s wall, {cpu:.0f} s CPU")
    report = workdir / "runs/default/eval/ddpm-100/builtin.json"
    wall, cpu = diffuse(EVAL, workdir)
    r = json.loads(report.read_text())
    lines.append(f"eval ddpm-100, {r['num_samples']} samples: {wall:.0f} s wall, {cpu:.0f} s CPU "
                 f"({json.dumps(r['seconds'])})")  # fmt: skip
    lines += ["", "quickstart run vs held-out:", "```", json.dumps(r["metrics"], indent=1), "```"]
    floor = data_floor(workdir)
    lines += ["", "floor (data vs data):", "```", json.dumps(floor, indent=1), "```"]
    if args.sweep:
        sweep = ["eval", "-m", "metrics=[fid,is,pr]", "sampler=ddim,ddpm", f"steps={args.steps}",
                 f"eval.num_samples={args.sweep_samples}", "progress=false"]  # fmt: skip
        wall, cpu = diffuse(sweep, workdir)
        diffuse(["report", "runs/default"], workdir)
        table = (workdir / "runs/default/report.md").read_text()
        lines += ["", f"sweep, {args.sweep_samples} samples each ({wall:.0f} s wall, "
                  f"{cpu:.0f} s CPU):", "", table]  # fmt: skip
    if args.cpu_threads:
        env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(args.cpu_threads)}
        wall, cpu = diffuse([*EVAL, "device=cpu"], workdir, env)
        r = json.loads(report.read_text())
        lines.append(f"eval ddpm-100 on the CPU, {args.cpu_threads} threads: {wall:.0f} s wall, "
                     f"{cpu:.0f} s CPU "
                     f"(fd_builtin {r['metrics']['fd_builtin']:.3f})")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (workdir / "bench_eval.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
