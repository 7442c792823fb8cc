"""Sample quality of the default quickstart run on the embedded data, and the floor it is read
against, with the built-in extractor.

    python scripts/bench_eval.py [--workdir DIR] [--train] [--sweep] [--cpu-threads N]

In --workdir (default: a new temporary folder):

1. with --train, `diffuse train` (the README's quickstart run, runs/default);
2. `diffuse eval metrics=[fid,kid,is,pr] sampler=ddpm steps=100` (the quickstart's sampler):
   1000 samples against the 1000 held-out (test split) images; run twice, to show the
   reference statistics being reused;
3. the floor: the same numbers between data and data: the two halves of the held-out split
   (500 vs 500), and 1000 training images against the held-out split (1000 vs 1000, the same
   sizes as the samples);
4. with --sweep, `diffuse eval -m sampler=ddim,ddpm steps=10,20,50,100 metrics=[fid,is,pr]` and
   `diffuse report`;
5. with --cpu-threads N, step 2 again on the CPU with N threads (device=cpu), for the wall time
   of eval on a small machine.

Prints a Markdown summary and writes it to <workdir>/bench_eval.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EVAL = ["eval", "metrics=[fid,kid,is,pr]", "sampler=ddpm", "steps=100", "progress=false"]


def diffuse(args: list[str], cwd: Path, env: dict | None = None) -> float:
    """`diffuse <args>` in cwd; returns the wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffuse_cli", *args], cwd=cwd, check=True,
                   env={**os.environ, **(env or {})})  # fmt: skip
    return time.perf_counter() - start


def data_floor(workdir: Path) -> list[dict]:
    """The metrics between two sets of real images, through the same code as eval."""
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
    rows = []
    for name, (a, la), b in [
        ("held-out halves (500 vs 500)", (test_f[:500], test_l[:500]), test_f[500:]),
        ("train 1000 vs held-out 1000", (train_f, train_l), test_f),
    ]:
        kd = D.kernel_distance(a, b, subset_size=len(a) // 2)
        rows.append({
            "pair": name,
            "fd_builtin": D.frechet_distance(D.feature_statistics(a), D.feature_statistics(b)),
            "kd_builtin": kd["mean"],
            "is_builtin": D.inception_score(la)["mean"],
            **D.precision_recall(a, b),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--train", action="store_true", help="train the quickstart run first")
    parser.add_argument("--sweep", action="store_true", help="sampler x steps sweep + report")
    parser.add_argument("--cpu-threads", type=int, default=0, help="also time eval on the CPU")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="diffuse-bench-eval-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lines = [f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}"]
    if args.train:
        seconds = diffuse(["train", "trainer.progress=false"], workdir)
        lines.append(f"train (quickstart, 1000 steps): {seconds:.0f} s")
    report = workdir / "runs/default/eval/ddpm-100/builtin.json"
    for attempt in ("first", "again (reference cached)"):
        seconds = diffuse(EVAL, workdir)
        r = json.loads(report.read_text())
        lines.append(f"eval ddpm-100, {r['num_samples']} samples, {attempt}: {seconds:.1f} s "
                     f"wall ({json.dumps(r['seconds'])})")  # fmt: skip
    lines += ["", "quickstart run vs held-out:", "```", json.dumps(r["metrics"], indent=1), "```"]
    floor = data_floor(workdir)
    lines += ["", "floor (data vs data):", "```", json.dumps(floor, indent=1), "```"]
    if args.sweep:
        sweep = ["eval", "-m", "metrics=[fid,is,pr]", "sampler=ddim,ddpm", "steps=10,20,50,100",
                 "progress=false"]  # fmt: skip
        seconds = diffuse(sweep, workdir)
        diffuse(["report", "runs/default"], workdir)
        table = (workdir / "runs/default/report.md").read_text()
        lines += ["", f"sweep ({seconds:.0f} s):", "", table]
    if args.cpu_threads:
        env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(args.cpu_threads)}
        seconds = diffuse([*EVAL, "device=cpu"], workdir, env)
        r = json.loads(report.read_text())
        lines.append(f"eval ddpm-100 on the CPU, {args.cpu_threads} threads: {seconds:.0f} s wall "
                     f"(fd_builtin {r['metrics']['fd_builtin']:.3f})")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (workdir / "bench_eval.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
