"""Training throughput and peak memory of `model=ddpm` with each UNet option toggled.

    python scripts/bench_unet_options.py                      # batch 8, 2 CPU threads
    python scripts/bench_unet_options.py --rounds 20 --device cuda --batch 128

A training step is forward, an L_simple-like MSE, backward and an Adam step on random 32x32
images with random timesteps, in train mode (dropout 0.1 on). Two measurements:

- Throughput: one process builds every variant and takes their training steps in turn (round
  robin, after warm-up steps), so load from other processes on the same cores reaches every
  option alike. img/s is the batch over an option's median step time; the fastest step is also
  shown. (With two threads on two shared cores, an OpenMP thread that waits for a descheduled
  peer can slow a step several times over; interleaving keeps the ratios fair.)
- Peak memory: a fresh subprocess per option and repeat, so the peak is its own. On CPU the
  peak resident set size (getrusage ru_maxrss), in full and as the growth over the resident size
  once the model and optimizer exist (gradients, Adam state, activations); on CUDA
  torch.cuda.max_memory_allocated. The table gives the median over repeats.

Prints a Markdown table with ratios to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

OPTIONS = {
    "baseline (DDPM)": [],
    "AdaGN": ["model.use_scale_shift_norm=true"],
    "BigGAN up/down": ["model.resblock_updown=true"],
    "checkpointing": ["model.use_checkpoint=true"],
    "channels_last": ["model.channels_last=true"],
}


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Variant:
    """model=ddpm with one option's overrides, its Adam optimizer and a data generator."""

    def __init__(self, option: str, args: argparse.Namespace):
        import torch

        import diffuse_cli as dc

        torch.manual_seed(0)
        self.torch, self.batch, self.device = torch, args.batch, torch.device(args.device)
        cfg = dc.compose_config(["model=ddpm", *OPTIONS[option]])
        self.model = dc.build_model(cfg).to(self.device).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=2e-4)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.gen = torch.Generator(self.device).manual_seed(0)

    def step(self) -> float:
        """One training step; returns its wall-clock seconds."""
        torch, b = self.torch, self.batch
        start = time.perf_counter()
        x = torch.randn(b, 3, 32, 32, generator=self.gen, device=self.device)
        eps = torch.randn(x.shape, generator=self.gen, device=self.device)
        t = torch.randint(0, 1000, (b,), generator=self.gen, device=self.device)
        (self.model(x, t) - eps).square().mean().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def memory_worker(option: str, args: argparse.Namespace) -> dict:
    """Peak memory of a few training steps of one option, alone in this process."""
    import resource

    import torch

    variant = Variant(option, args)
    setup = rss_mib()
    if variant.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.memory_steps):
        variant.step()
    if variant.device.type == "cuda":
        return {"peak": torch.cuda.max_memory_allocated() / 2**20, "growth": float("nan")}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    return {"peak": peak, "growth": peak - setup}


def speed_worker(args: argparse.Namespace) -> dict:
    """Step times of every option, their steps interleaved round robin."""
    variants = {option: Variant(option, args) for option in OPTIONS}
    for _ in range(args.warmup):
        for variant in variants.values():
            variant.step()
    times: dict[str, list[float]] = {option: [] for option in OPTIONS}
    for r in range(args.rounds):
        for option, variant in variants.items():
            times[option].append(variant.step())
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    return {o: {"times": times[o], "n": v.params} for o, v in variants.items()}


def run_worker(kind: str, args: argparse.Namespace, option: str = "") -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--option", option]
    for key in ("batch", "rounds", "warmup", "memory_steps", "threads", "device"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(speed: dict, memory: dict[str, list[dict]], args: argparse.Namespace) -> str:
    img_s = {o: args.batch / statistics.median(s["times"]) for o, s in speed.items()}
    fastest = {o: args.batch / min(s["times"]) for o, s in speed.items()}
    peak = {o: statistics.median(r["peak"] for r in runs) for o, runs in memory.items()}
    growth = {o: statistics.median(r["growth"] for r in runs) for o, runs in memory.items()}
    base = "baseline (DDPM)"
    cuda = args.device.startswith("cuda")
    rows = [
        "| option | params | img/s | x baseline | fastest step img/s "
        f"| {'peak CUDA memory' if cuda else 'peak RSS'} (MiB) | x baseline |"
        + ("" if cuda else " training growth (MiB) | x baseline |"),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + ("" if cuda else " ---: | ---: |"),
    ]
    for o in OPTIONS:
        row = (
            f"| {o} | {speed[o]['n'] / 1e6:.2f}M | {img_s[o]:.2f} | {img_s[o] / img_s[base]:.2f} "
            f"| {fastest[o]:.2f} | {peak[o]:.0f} | {peak[o] / peak[base]:.2f} |"
        )
        if not cuda:
            row += f" {growth[o]:.0f} | {growth[o] / growth[base]:.2f} |"
        rows.append(row)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per option")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per option first")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps per memory run")
    parser.add_argument("--repeats", type=int, default=3, help="memory runs per option")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=["speed", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--option", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        result = speed_worker(args) if args.worker == "speed" else memory_worker(args.option, args)
        print(json.dumps(result))
        return
    memory: dict[str, list[dict]] = {o: [] for o in OPTIONS}
    for repeat in range(args.repeats):
        for option in OPTIONS:
            memory[option].append(run_worker("memory", args, option))
            print(
                f"memory {repeat + 1}/{args.repeats} {option}: {memory[option][-1]}",
                file=sys.stderr,
            )
    speed = run_worker("speed", args)
    where = f"{args.device}" + (f", {args.threads} threads" if args.device == "cpu" else "")
    print(
        f"model=ddpm, batch {args.batch}, {where}. img/s: the batch over the median of "
        f"{args.rounds} interleaved training steps per option (after {args.warmup} warm-up steps); "
        f"memory: median of {args.repeats} fresh processes of {args.memory_steps} steps.\n"
    )
    print(table(speed, memory, args))


if __name__ == "__main__":
    main()
