"""Check every accelerator path of the toolkit on one machine and measure it, in one command.

    python scripts/gpu_check.py --out DIR                        # a CUDA GPU: at most 8 minutes
    python scripts/gpu_check.py --out DIR --device cpu --quick   # the same stages on a CPU, < 3 min

Why: a GPU may be lent for a few minutes only; the time must go to measuring. Every stage runs
in its own process with its own time limit (scripts/stage_runner.py), so a hang or a crash costs
only that stage, and DIR/gpu_check.json and DIR/gpu_check.md are rewritten after every stage
(status ok / failed / skipped, seconds, figures, the reason and the end of the output when not
ok); DIR/gpu_check.log holds every stage's output, DIR/cuda_tests_failure.txt the traceback of
the first failing CUDA test. Stages:

- install: the project from its own files into the running Python, `pip install -e
  ".[dev,bench]"`. A machine without a package index needs the requirements it lacks as
  wheels: `--wheels W` installs W/* offline first (`--no-index --no-deps`), then the project
  with `--no-deps --no-build-isolation`; the stage lists any requirement still missing.
  `--no-install` skips it (the project must then be importable already).
- environment: torch, CUDA, the device, its memory, bf16 support and its bf16 dense peak.
- cuda_tests: `DIFFUSE_TEST_DEVICE=cuda pytest -m cuda -x` (tests/conftest.py), the trainer,
  sampler and eval tests on the GPU.
- train_fp32, train_bf16, train_fp16 (loss scaling; skipped steps counted from
  metrics.jsonl), train_compile, train_channels_last: a short `diffuse train` of each.
- resume_exact: N steps, then resumed to 2N, against 2N straight, weights compared exactly, in
  fp32 and bf16 (on a difference, a second straight run tells nondeterminism from a resume bug).
- resume_fp16_as_bf16: a fp16 run resumed with bf16. A resume is refused only for other
  model-defining groups or another loss (docs/ARCHITECTURE.md, Errors; README names no rule
  for the precision), so it must resume and reach its last step with a finite loss.
- bench: scripts/bench.py --bf16 --compile, `model=ddpm` training at batch 128 and DDIM-50
  sampling against diffusers in the same process; ratios, peak memory, training TFLOP/s
  (torch's FLOP counter: a DDPM CIFAR-10 step is 36.3 GFLOP per image) against the card's bf16
  peak, and the targets: training >= 1.25x diffusers and >= 8000 img/s, sampling >= 1.0x.
- accelerate_launch: `accelerate launch` of a short training (every GPU, NCCL, when several).
- fid: `diffuse eval metrics=[fid]` of 10,000 samples, timed, with Inception-v3 when its
  weights are in torch's hub cache, else with the built-in extractor (the report says which).

--quick shrinks every stage (tiny networks, 4 steps, 64 samples, bench of `model=small` at
batch 4 without compiling; on a CPU the compiled training is the 2-D MLP's, since compiling the
UNet's step takes minutes there); stages that need CUDA itself (fp16, the CUDA tests, NCCL) are
skipped on a CPU with the reason. --device cpu hides any GPU from the stages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_runner import Stage, StageFigures, run_stages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEM = "gpu_check"
# seconds per stage: (full, --quick). The full column sums to 8 minutes; the --quick one
# leaves room for a busy CPU (it guards against hangs, not for the 3-minute aim).
LIMITS = {
    "install": (25, 120),
    "environment": (20, 60),
    "cuda_tests": (55, 30),
    "train_fp32": (15, 90),
    "train_bf16": (15, 90),
    "train_fp16": (15, 30),
    "train_compile": (45, 240),
    "train_channels_last": (15, 90),
    "resume_exact": (35, 120),
    "resume_fp16_as_bf16": (20, 30),
    "bench": (170, 240),
    "accelerate_launch": (15, 90),
    "fid": (35, 120),
}
# bf16 dense tensor peaks from NVIDIA's data sheets, TFLOP/s; the first name contained wins
BF16_PEAK_TFLOPS = [
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100", 989.4),  # SXM (the name "H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
]
DDPM_TRAIN_GFLOP = 36.3  # per image, one training step of the DDPM CIFAR-10 network
TARGETS = {"train_ratio": 1.25, "train_img_per_s": 8000.0, "sample_ratio": 1.0}


def bf16_peak(device_name: str) -> float | str:
    for name, peak in BF16_PEAK_TFLOPS:
        if name.lower() in device_name.lower():
            return peak
    return "unknown"


# ---- the stages' side: each runs as `gpu_check.py --stage NAME` ----


class Check:
    """What a stage knows: the options, where to work, and how to run the CLI."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.cuda = args.device == "cuda"
        self.quick = args.quick
        self.work = Path(args.work)
        self.out = Path(args.out)
        self.figures = StageFigures()

    def run(self, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a command, its output passed through as it comes (a stage killed at its limit
        still shows how far it got); returns the CompletedProcess with the output."""
        print("$", " ".join(argv), flush=True)
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            errors="replace",
        )
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        return subprocess.CompletedProcess(argv, proc.wait(), "".join(lines))

    def diffuse(self, *args: str) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-m", "diffuse_cli", *args])

    def train_overrides(self, run_dir: Path, steps: int | None = None) -> list[str]:
        """A tiny run (--quick) or `model=small` at batch 64, no preview grids."""
        if self.quick:
            size = [
                "model.model_channels=16",
                "model.channel_mult=[1,2]",
                "model.attention_resolutions=[8]",
                "data.image_size=16",
                "data.num_train=64",
                "data.num_test=32",
                "schedule.num_timesteps=50",
                "trainer.batch_size=8",
            ]
            steps = steps or 4
        else:
            size = ["model=small", "trainer.batch_size=64", "data.num_train=2048"]
            steps = steps or 20
        return [
            *size,
            f"trainer.max_steps={steps}",
            f"trainer.ckpt_every={steps}",
            f"trainer.log_every={max(1, steps // 4)}",
            "trainer.warmup_steps=2",
            "trainer.sample_num=0",
            "trainer.progress=false",
            f"run_dir={run_dir}",
        ]


def metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def training_figures(run_dir: Path, seconds: float) -> dict:
    rows = metrics_rows(run_dir)
    if not rows:
        return {"seconds": round(seconds, 2)}
    last = rows[-1]
    rates = [r["img_per_s"] for r in rows[1:] if r.get("img_per_s")] or [rows[0]["img_per_s"]]
    return {
        "seconds": round(seconds, 2),
        "steps": last["step"],
        "final_loss": last["loss"],
        "img_per_s": round(statistics.median(rates), 1),
        "skipped_steps": last.get("skipped_steps", 0),
        "world_size": last.get("world_size"),
    }


def train_variant(check: Check, name: str, overrides: list[str], base: list[str]) -> None:
    run_dir = check.work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    proc = check.diffuse("train", *base, f"run_dir={run_dir}", *overrides)
    figures = training_figures(run_dir, time.perf_counter() - start)
    check.figures.record(overrides=" ".join(overrides) or "(none)", **figures)
    if proc.returncode != 0:
        raise SystemExit(f"diffuse train failed with exit status {proc.returncode}")
    loss = figures.get("final_loss")
    if loss is None or loss != loss:  # strict JSON writes null for a non-finite loss
        raise SystemExit(f"the final loss is not finite: {loss}")


def stage_environment(check: Check) -> None:
    from importlib import metadata

    import torch

    figures = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("accelerate", "diffusers", "hydra-core", "torch-fidelity", "pytest"):
        try:
            figures[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            figures[name] = "missing"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.update(
            device=props.name,
            gpus=torch.cuda.device_count(),
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            bf16=torch.cuda.is_bf16_supported(),
            bf16_peak_tflops=bf16_peak(props.name),
        )
    else:
        figures.update(device="cpu", bf16_peak_tflops="unknown")
    check.figures.record(**figures)
    from diffuse_cli.evaluate.features.inception import default_weights_path

    check.figures.record(inception_weights=default_weights_path().is_file())
    if check.cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA GPU")


def stage_install(check: Check) -> None:
    from importlib import metadata

    pip = [sys.executable, "-m", "pip", "install", "--no-input"]
    try:  # building offline (--no-build-isolation) takes the installed one: pyproject wants >= 68
        check.figures.record(setuptools=metadata.version("setuptools"))
    except metadata.PackageNotFoundError:
        check.figures.record(setuptools="missing")
    if check.args.wheels:
        wheels = sorted(str(p) for p in Path(check.args.wheels).iterdir())
        check.figures.record(wheels=len(wheels))
        offline = [*pip, "--no-index", "--no-deps", "--no-build-isolation", *wheels]
        if wheels and check.run(offline).returncode != 0:
            raise SystemExit("installing the wheels failed")
        project = [*pip, "--no-deps", "--no-build-isolation", "-e", str(ROOT)]
    else:
        project = [*pip, "-e", f"{ROOT}[dev,bench]"]
    if check.run(project).returncode != 0:
        raise SystemExit("installing the project failed")
    missing = missing_requirements()
    check.figures.record(missing_requirements=missing)
    needed = [name for name in missing if name not in IMPORTED_ON_REQUEST]
    if needed:
        raise SystemExit(f"still missing: {', '.join(needed)}")


IMPORTED_ON_REQUEST = {"wandb", "ruff", "hydra-submitit-launcher", "guided-diffusion-sdk"}


def missing_requirements() -> list[str]:
    """The project's requirements (core, dev, bench) that are not installed; the check needs
    them all but IMPORTED_ON_REQUEST (logger=wandb, lint, Slurm, the interop tests)."""
    import re
    from importlib import metadata

    dist = metadata.distribution("diffuse")
    missing = []
    for req in dist.requires or []:
        extra = re.search(r'extra\s*==\s*"([^"]+)"', req)
        if extra and extra.group(1) not in ("dev", "bench"):
            continue
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0)
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    return sorted(set(missing))


def stage_cuda_tests(check: Check) -> None:
    pytest = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider"]
    if not check.cuda:
        check.figures.skip("needs CUDA: DIFFUSE_TEST_DEVICE=cuda refuses to run without a GPU")
    workers = ["-n", str(min(8, os.cpu_count() or 1))] if has_module("xdist") else []
    proc = check.run(
        [*pytest, "-x", "-q", "--tb=long", *workers], env={"DIFFUSE_TEST_DEVICE": "cuda"}
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    check.figures.record(summary=summary, workers=workers[1] if workers else 1)
    if proc.returncode != 0:
        text = proc.stdout
        start = text.find("= FAILURES =")
        failure = text[text.rfind("\n", 0, start) + 1 :] if start >= 0 else text[-20000:]
        (check.out / "cuda_tests_failure.txt").write_text(failure)
        raise SystemExit(f"pytest -m cuda failed: {summary}")


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def stage_train(check: Check, variant: str) -> None:
    overrides = {
        "train_fp32": [],
        "train_bf16": ["trainer.mixed_precision=bf16"],
        "train_fp16": ["trainer.mixed_precision=fp16"],
        "train_compile": ["trainer.compile=true"],
        "train_channels_last": ["model.channels_last=true"],
    }[variant]
    if variant == "train_fp16" and not check.cuda:
        check.figures.skip("fp16 loss scaling needs CUDA (the trainer refuses fp16 on a CPU)")
    if variant == "train_bf16" and check.cuda:
        import torch

        if not torch.cuda.is_bf16_supported():
            check.figures.skip(f"{torch.cuda.get_device_name()} has no bf16")
    base = [o for o in check.train_overrides(check.work) if not o.startswith("run_dir=")]
    if variant == "train_compile" and check.quick and not check.cuda:
        # compiling the UNet's training step takes minutes of a CPU; the MLP's, half a minute
        overrides = ["experiment=toy2d", *overrides]
        base = [
            "trainer.max_steps=4",
            "trainer.ckpt_every=4",
            "trainer.log_every=1",
            "trainer.sample_num=0",
            "trainer.progress=false",
        ]
    train_variant(check, variant, overrides, base)


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    from diffuse_cli.train.checkpoint import latest_checkpoint

    folder = latest_checkpoint(run_dir)
    model, ema = load_file(folder / "model.safetensors"), load_file(folder / "ema.safetensors")
    return {
        **{f"model.{k}": v for k, v in model.items()},
        **{f"ema.{k}": v for k, v in ema.items()},
    }


def max_difference(a: dict, b: dict) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def train_in_process(check: Check, run_dir: Path, steps: int, *overrides: str) -> None:
    """`diffuse train` through the function the CLI calls, sparing an interpreter start."""
    import diffuse_cli as dc
    from diffuse_cli.train.trainer import train

    keys = {o.split("=")[0] for o in overrides}
    base = check.train_overrides(run_dir, steps=steps)
    base = [o for o in base if o.split("=")[0] not in keys]
    train(dc.compose_config([*base, *overrides], command="train"))


def stage_resume_exact(check: Check) -> None:
    """N steps, resumed to 2N, against 2N straight (tests/train/test_resume.py on the device)."""
    precisions = ["no"] if check.quick else ["no", "bf16"]
    steps = 4 if check.quick else 10
    failures = []
    for precision in precisions:
        common = [
            f"trainer.mixed_precision={precision}",
            "model.dropout=0.1",
            "data.hflip=true",
            f"trainer.ckpt_every={steps}",
        ]
        folders = {
            name: check.work / f"resume-{precision}-{name}"
            for name in ("straight", "resumed", "again")
        }
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        train_in_process(check, folders["straight"], 2 * steps, *common)
        train_in_process(check, folders["resumed"], steps, *common)
        train_in_process(check, folders["resumed"], 2 * steps, *common)
        straight = final_weights(folders["straight"])
        diff = max_difference(straight, final_weights(folders["resumed"]))
        figures = {f"{precision}_exact": diff == 0.0, f"{precision}_max_abs_diff": diff}
        if diff != 0.0:  # is it the resume, or do two straight runs differ already?
            train_in_process(check, folders["again"], 2 * steps, *common)
            repeat = max_difference(straight, final_weights(folders["again"]))
            figures[f"{precision}_two_straight_runs_max_abs_diff"] = repeat
            failures.append(
                f"{precision}: resumed differs by {diff:.3g} (two straight runs by {repeat:.3g})"
            )
        check.figures.record(**figures)
    if failures:
        raise SystemExit("; ".join(failures))


def stage_resume_fp16_as_bf16(check: Check) -> None:
    if not check.cuda:
        check.figures.skip("fp16 needs CUDA (the trainer refuses fp16 on a CPU)")
    steps = 10
    run_dir = check.work / "fp16-then-bf16"
    shutil.rmtree(run_dir, ignore_errors=True)
    first = check.diffuse(
        "train", *check.train_overrides(run_dir, steps=steps), "trainer.mixed_precision=fp16"
    )
    if first.returncode != 0:
        raise SystemExit(f"the fp16 run failed ({first.returncode})")
    over = [o for o in check.train_overrides(run_dir, steps=2 * steps) if "ckpt_every" not in o]
    second = check.diffuse(
        "train", *over, f"trainer.ckpt_every={steps}", "trainer.mixed_precision=bf16"
    )
    rows = metrics_rows(run_dir)
    last = rows[-1] if rows else {}
    check.figures.record(
        exit_status=second.returncode,
        final_step=last.get("step"),
        final_loss=last.get("loss"),
        message=(second.stdout.strip().splitlines() or [""])[-1],
    )
    if second.returncode != 0:
        raise SystemExit("refused, but only model-defining groups and the loss may not change")
    if last.get("step") != 2 * steps or last.get("loss") is None:
        raise SystemExit(f"the resumed run did not reach step {2 * steps} with a finite loss")


def stage_bench(check: Check) -> None:
    """Training first, then sampling, each its own bench.py run, so the training figures are
    recorded even if sampling runs out of time."""
    if check.quick:  # minutes of compilation on a CPU: left out
        workloads = ["train_small", "sample_ddim50_small"]
        options = ["--batch", "4", "--reps", "2", "--warmup", "1", "--no-memory", "--threads", "1"]
    else:
        workloads = ["train_ddpm", "sample_ddim50_ddpm"]
        options = ["--compile", "--batch", "128", "--reps", "10", "--warmup", "2"]
        options += ["--memory-in-process"] if check.cuda else ["--no-memory"]
    results = {}
    for workload in workloads:
        bench_json = check.work / f"bench-{workload}.json"
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--device",
            check.args.device,
            *(["--bf16"] if check.cuda or not check.quick else []),  # slow without AMX
            "--workloads",
            workload,
            *options,
            "--json",
            str(bench_json),
        ]
        proc = check.run(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"bench.py --workloads {workload} failed ({proc.returncode})")
        results.update(json.loads(bench_json.read_text()))
        check.figures.record(**bench_figures(results, check))


def bench_figures(results: dict, check: Check) -> dict:
    """Ratios, img/s, memory, TFLOP/s against the peak, and the targets with pass/fail."""
    flags = (["bf16"] if check.cuda or not check.quick else []) + (
        [] if check.quick else ["compile"]
    )
    figures: dict = {"flags": " + ".join(flags) or "fp32"}
    if check.quick:
        figures["note"] = "--quick: the targets are for model=ddpm, bf16 + compile, on a GPU"
    peak: float | str = "unknown"
    if check.cuda:
        import torch

        peak = bf16_peak(torch.cuda.get_device_name())
    train = next((r for n, r in results.items() if n.startswith("train")), None)
    sample = next((r for n, r in results.items() if n.startswith("sample")), None)
    for label, r in (("train", train), ("sample", sample)):
        if r is None:
            continue
        figures[f"{label}_workload"] = f"batch {r['batch']}"
        for key in ("ours", "diffusers", "ratio", "ratio_paired_median"):
            figures[f"{label}_{key}"] = round(r[key], 3)
        for impl in ("ours", "diffusers"):
            if f"{impl}_peak_mib" in r:
                figures[f"{label}_{impl}_peak_mib"] = round(r[f"{impl}_peak_mib"])
    if train is not None:
        measured = train["diffusers_train_gflop_per_image"]
        figures["train_gflop_per_image_measured"] = round(measured, 2)
        if not check.quick:  # model=ddpm: the figure the limits were worked out with
            figures["train_gflop_per_image_expected"] = DDPM_TRAIN_GFLOP
        figures["train_gflop_per_image_ours"] = round(train["ours_train_gflop_per_image"], 2)
        achieved = train["ours"] * measured / 1e3  # the work of diffusers' layout, per second
        figures["train_tflops_achieved"] = round(achieved, 2)
        figures["bf16_peak_tflops"] = peak
        if isinstance(peak, float):
            figures["train_share_of_peak"] = round(achieved / peak, 3)
        figures["target_train_ratio_1.25"] = pass_fail(train["ratio"], TARGETS["train_ratio"])
        figures["target_train_8000_img_per_s"] = pass_fail(
            train["ours"], TARGETS["train_img_per_s"]
        )
    if sample is not None:
        figures["target_sample_ratio_1.0"] = pass_fail(sample["ratio"], TARGETS["sample_ratio"])
    return figures


def pass_fail(value: float, target: float) -> str:
    return f"{'pass' if value >= target else 'fail'} ({value:.3g} against {target:g})"


def stage_accelerate_launch(check: Check) -> None:
    gpus = 0
    if check.cuda:
        import torch

        gpus = torch.cuda.device_count()
    processes = max(gpus, 1)
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    launch += ["--multi_gpu"] if gpus > 1 else ([] if check.cuda else ["--cpu"])
    run_dir = check.work / "launched"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    proc = check.run([*launch, "-m", "diffuse_cli", "train", *check.train_overrides(run_dir)])
    figures = training_figures(run_dir, time.perf_counter() - start)
    figures.update(processes=processes, nccl=("used" if gpus > 1 else "not used: one process"))
    check.figures.record(**figures)
    if proc.returncode != 0:
        raise SystemExit(f"accelerate launch failed ({proc.returncode})")
    if figures.get("world_size") != processes:
        raise SystemExit(f"metrics.jsonl says world_size {figures.get('world_size')}")


def stage_fid(check: Check) -> None:
    """Train a run at 32x32, then time `diffuse eval metrics=[fid]` through the function the
    CLI calls."""
    import diffuse_cli as dc
    from diffuse_cli.evaluate.command import eval_command
    from diffuse_cli.evaluate.features.inception import default_weights_path

    run_dir = check.work / "fid-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    at_32 = ["data.image_size=32", "model.attention_resolutions=[16]"] if check.quick else []
    train_in_process(check, run_dir, 4 if check.quick else 20, *at_32)
    weights = default_weights_path()
    extractor = "inception" if weights.is_file() else "builtin"
    num, steps = (64, 3) if check.quick else (10_000, 10)
    check.figures.record(extractor=extractor, num_samples=num, sampler=f"ddim-{steps}")
    if extractor == "builtin":
        check.figures.record(
            why_builtin=f"no Inception weights at {weights}, and none can be downloaded here: "
            "the built-in extractor stands in to time the path"
        )
    cfg = dc.compose_config(
        [
            f"run_dir={run_dir}",
            "metrics=[fid]",
            "sampler=ddim",
            f"steps={steps}",
            f"eval.num_samples={num}",
            f"eval.features={extractor}",
            f"batch_size={min(num, 1000)}",
            f"eval.cache_dir={check.work / 'cache'}",
            "progress=false",
            f"device={check.args.device}",
        ],
        command="eval",
    )
    start = time.perf_counter()
    (path,) = eval_command(cfg)
    seconds = time.perf_counter() - start
    report = json.loads(Path(path).read_text())
    metric = "fid" if extractor == "inception" else "fd_builtin"
    check.figures.record(
        seconds=round(seconds, 2),
        metric=metric,
        value=report["metrics"].get(metric),
        samples_per_s=round(num / seconds, 1),
        seconds_for_50k_projected=round(50_000 * seconds / num, 1),
        report_seconds=report.get("seconds"),
    )


STAGES = {
    "install": stage_install,
    "environment": stage_environment,
    "cuda_tests": stage_cuda_tests,
    **{
        name: (lambda c, n=name: stage_train(c, n))
        for name in (
            "train_fp32",
            "train_bf16",
            "train_fp16",
            "train_compile",
            "train_channels_last",
        )
    },
    "resume_exact": stage_resume_exact,
    "resume_fp16_as_bf16": stage_resume_fp16_as_bf16,
    "bench": stage_bench,
    "accelerate_launch": stage_accelerate_launch,
    "fid": stage_fid,
}
assert STAGES.keys() == LIMITS.keys()


# ---- the runner's side ----


def plan(args: argparse.Namespace) -> list[Stage]:
    names = list(STAGES) if not args.stages else args.stages.split(",")
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    child = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--out",
        args.out,
        "--work",
        args.work,
        "--device",
        args.device,
    ] + ["--quick"] * args.quick
    child += ["--wheels", args.wheels] if args.wheels else []
    env = {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU check on a GPU machine stays on the CPU
        if args.quick:  # the plumbing only: one thread each, so a busy CPU cannot stall it
            env["OMP_NUM_THREADS"] = "1"
    stages = []
    for name in names:
        limit = LIMITS[name][1 if args.quick else 0] * args.limit_scale
        skip = (
            "--no-install: the environment is used as it is"
            if (name == "install" and args.no_install)
            else None
        )
        stages.append(Stage(name, limit, [*child, "--stage", name], env, skip))
    return stages


def git_commit() -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return proc.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where gpu_check.json/.md/.log go")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the plumbing only")
    parser.add_argument("--no-install", action="store_true", help="skip the install stage")
    parser.add_argument("--wheels", help="a folder of wheels to install offline first")
    parser.add_argument("--stages", help=f"comma-separated subset of {', '.join(STAGES)}")
    parser.add_argument(
        "--limit-scale",
        type=float,
        default=1.0,
        help="multiply every stage's time limit (a slower or busier machine)",
    )
    parser.add_argument("--work", help="scratch folder for runs (default: a temporary one)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # run one stage (the child side)
    args = parser.parse_args()
    if args.stage:
        STAGES[args.stage](Check(args))
        return
    out = Path(args.out).resolve()
    args.out = str(out)
    args.wheels = str(Path(args.wheels).resolve()) if args.wheels else None
    keep_work = args.work is not None
    args.work = str(Path(args.work or tempfile.mkdtemp(prefix="gpu_check-")).resolve())
    header = {
        "commit": git_commit(),
        "command": " ".join(sys.argv),
        "device": args.device,
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    start = time.perf_counter()
    results = run_stages(plan(args), out, STEM, "GPU check", header, Path(args.work), ROOT)
    if not keep_work:
        shutil.rmtree(args.work, ignore_errors=True)
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "failed", "skipped")}
    print(f"{counts} in {time.perf_counter() - start:.0f} s; see {out / (STEM + '.md')}")


if __name__ == "__main__":
    main()
