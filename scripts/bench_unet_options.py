"""Training throughput and peak memory of `model=ddpm` with each UNet option toggled.

    python scripts/bench_unet_options.py                      # batch 8, 2 CPU threads, 3 repeats
    python scripts/bench_unet_options.py --repeats 5 --steps 8 --device cuda --batch 128

Every measurement runs in a fresh subprocess (one option, one repeat), so its peak memory is its
own: on CPU the peak resident set size (getrusage ru_maxrss), reported in full and as the growth
over the resident size once the model and optimizer exist (activations, gradients, Adam state);
on CUDA torch.cuda.max_memory_allocated. A training step is forward, an L_simple-like MSE,
backward and an Adam step on random 32x32 images, with random timesteps, in train mode (dropout
0.1 on). Throughput is images per second over the timed steps after warm-up steps. The options
are interleaved within each repeat, so a load that comes and goes (other processes on the same
cores) reaches all of them alike; the table shows medians over repeats and ratios to the
baseline. Prints a Markdown table.
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


def worker(args: argparse.Namespace) -> dict:
    """One measurement: build model=ddpm with the overrides, train `warmup + steps` steps."""
    import resource

    import torch

    import diffuse_cli as dc

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = dc.compose_config(["model=ddpm", *OPTIONS[args.worker]])
    model = dc.build_model(cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator(device).manual_seed(0)

    def step() -> None:
        x = torch.randn(args.batch, 3, 32, 32, generator=gen, device=device)
        eps = torch.randn(x.shape, generator=gen, device=device)
        t = torch.randint(0, 1000, (args.batch,), generator=gen, device=device)
        loss = (model(x, t) - eps).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    setup_rss = rss_mib()
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak, growth = torch.cuda.max_memory_allocated() / 2**20, float("nan")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
        growth = peak - setup_rss
    return {"img_s": args.batch * args.steps / seconds, "peak": peak, "growth": growth, "n": params}


def measure(option: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", option]
    for key in ("batch", "steps", "warmup", "threads", "device"):
        cmd += [f"--{key}", str(getattr(args, key))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    med = {
        o: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for o, runs in results.items()
    }
    base = med["baseline (DDPM)"]
    cuda = args.device.startswith("cuda")
    peak_name = "peak CUDA memory (MiB)" if cuda else "peak RSS (MiB)"
    head = f"| option | params | img/s | x baseline | {peak_name} | x baseline |"
    rule = "| --- | ---: | ---: | ---: | ---: | ---: |"
    if not cuda:
        head += " training growth (MiB) | x baseline |"
        rule += " ---: | ---: |"
    rows = [head, rule]
    for option, m in med.items():
        spread = ", ".join(f"{r['img_s']:.2f}" for r in results[option])
        row = (
            f"| {option} | {m['n'] / 1e6:.2f}M | {m['img_s']:.2f} ({spread}) "
            f"| {m['img_s'] / base['img_s']:.2f} "
            f"| {m['peak']:.0f} | {m['peak'] / base['peak']:.2f} |"
        )
        if not cuda:
            row += f" {m['growth']:.0f} | {m['growth'] / base['growth']:.2f} |"
        rows.append(row)
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", choices=sorted(OPTIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results: dict[str, list[dict]] = {o: [] for o in OPTIONS}
    for repeat in range(args.repeats):
        for option in OPTIONS:
            results[option].append(measure(option, args))
            r = results[option][-1]
            print(
                f"repeat {repeat + 1}/{args.repeats} {option}: {r['img_s']:.2f} img/s, "
                f"peak {r['peak']:.0f} MiB",
                file=sys.stderr,
            )
    print(
        f"model=ddpm, batch {args.batch}, {args.device}"
        + (f", {args.threads} threads" if args.device == "cpu" else "")
        + f"; median of {args.repeats} runs of {args.steps} timed steps after {args.warmup} warm-up"
        " steps (the runs' img/s in brackets)\n"
    )
    print(table(results, args))


if __name__ == "__main__":
    main()
