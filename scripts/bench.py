"""Speed and memory of our UNet, loss and DDIM sampler against diffusers' UNet2DModel with the
same layout and its DDPMScheduler / DDIMScheduler, side by side in one run.

    python scripts/bench.py                                   # CPU, 2 threads, every workload
    python scripts/bench.py --reps 20 --json bench.json
    python scripts/bench.py --device cuda --bf16 --compile

Why: the issue's speed target is relative (training at least 1.25x diffusers' throughput for
the same network and batch, DDIM sampling at least as fast), so both sides run in the same
process, on the same threads, with the same random inputs and options.

Workloads (img/s, higher is better):
- train_ddpm: model=ddpm (35.7M) at batch 8; train_small: model=small (0.69M) at batch 32.
  One training step: x_t from random x0, eps and t, the eps MSE (L_simple), backward, an Adam
  step, in train mode. Ours: build_model, build_diffusion, build_loss and build_optimizer
  (fused Adam) of the composed config, exactly as the trainer; diffusers: DDPMScheduler.add_noise,
  F.mse_loss and torch's default Adam, as its training scripts use. --plain-adam gives ours
  the default Adam too, to compare the networks and losses alone.
- sample_ddim50_small (and, on request, sample_ddim50_ddpm): one 50-step DDIM run (eta 0,
  clipped x0) of a batch of 32 (8) from noise. Ours: diffuse_cli.sample with sampler=ddim
  steps=50; diffusers: DDIMScheduler.set_timesteps(50) and its step().

The diffusers network is UNet2DModel with our channels, channel_mult, residual blocks per level,
attention resolutions (one head), dropout, sinusoidal time embedding [cos, sin] and, layer by
layer, our GroupNorm group counts; the script prints both parameter counts and forward FLOPs.

Timing: after --warmup untimed repetitions per side, --reps repetitions alternate between the
sides (the order flips every repetition), so load from other processes reaches both alike. A
side's img/s is the batch over its median time, its spread the min and max img/s. The ratio is
ours / diffusers (> 1: ours is faster) of those medians, and also the median and interquartile
range of the per-repetition paired ratios, the steadier number when other processes load the
cores unevenly.

--batch N gives every workload batch N (the GPU check times `model=ddpm` at 128, the DDPM
paper's batch). Training rows also carry the FLOPs of one training step per image, forward and
backward, by torch's FLOP counter (`*_train_gflop_per_image`; diffusers' layout of the DDPM
CIFAR-10 network: 36.3), and the TFLOP/s that makes at the measured img/s.

Peak memory: each (side, workload) runs alone in a fresh subprocess that imports both libraries
and takes two training steps (the second one holds the Adam state) or one sampling run. On CUDA
torch.cuda.max_memory_allocated (with --memory-in-process: in the timing process, a side's
resident weights and optimizer state plus the peak of one repetition, which spares compiling
each network again); on CPU the peak resident set size (VmHWM of /proc/self/status)
and its growth over the resident size once the network and optimizer are built (tracemalloc
does not see torch's allocator).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

# name: (model config, kind, batch)
WORKLOADS = {
    "train_ddpm": ("ddpm", "train", 8),
    "train_small": ("small", "train", 32),
    "sample_ddim50_small": ("small", "sample", 32),
    "sample_ddim50_ddpm": ("ddpm", "sample", 8),
}
DEFAULT_WORKLOADS = "train_ddpm,train_small,sample_ddim50_small"
STEPS = 50  # DDIM steps
SIDES = ("ours", "diffusers")


def memory_status_mib(key: str) -> float:
    """A line of /proc/self/status in MiB: VmRSS (resident now) or VmHWM (its peak). Unlike
    getrusage's ru_maxrss, VmHWM starts afresh at exec, so the benchmark's own (larger) process
    does not leak into a worker's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2**10  # kB
    raise RuntimeError(f"no {key} in /proc/self/status")


class Side:
    """One implementation of one workload: `run()` does one repetition (a training step or a
    whole sampling run) and returns its wall-clock seconds."""

    def __init__(self, workload: str, args: argparse.Namespace):
        import torch

        import diffuse_cli as dc

        self.torch = torch
        self.model_name, self.kind, self.batch = WORKLOADS[workload]
        self.batch = args.batch or self.batch
        self.device = torch.device(args.device)
        self.bf16 = args.bf16
        self.cfg = dc.compose_config(
            [f"model={self.model_name}", "sampler=ddim", f"steps={STEPS}"]
            if self.kind == "sample"
            else [f"model={self.model_name}"],
            command=self.kind,
        )
        torch.manual_seed(0)
        self.net = self.build().to(self.device).train(self.kind == "train")
        self.params = sum(p.numel() for p in self.net.parameters())
        self.call = torch.compile(self.net) if args.compile else self.net
        if self.kind == "train":
            self.opt = self.optimizer(args.plain_adam)
        self.gen = torch.Generator(self.device).manual_seed(1)
        self.shape = (self.batch, 3, 32, 32)

    def optimizer(self, plain: bool):
        """torch's default Adam with the trainer config's settings (what diffusers' training
        scripts use)."""
        tc = self.cfg.trainer
        return self.torch.optim.Adam(self.net.parameters(), lr=tc.lr, betas=tuple(tc.betas))

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)

    def run(self) -> float:
        torch = self.torch
        start = time.perf_counter()
        if self.kind == "train":
            x0 = torch.randn(self.shape, generator=self.gen, device=self.device)
            t = torch.randint(0, 1000, (self.batch,), generator=self.gen, device=self.device)
            with self.autocast():
                loss = self.loss(x0, t)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            x_T = torch.randn(self.shape, generator=self.gen, device=self.device)
            with torch.no_grad(), self.autocast():
                self.sample(x_T)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


class Ours(Side):
    def build(self):
        import diffuse_cli as dc
        from diffuse_cli.build import build_loss

        self.diffusion = dc.build_diffusion(self.cfg)
        self.loss_fn = build_loss(self.cfg) if self.kind == "train" else None
        return dc.build_model(self.cfg)

    def optimizer(self, plain: bool):
        """The trainer's optimizer (fused Adam on CPU and CUDA), unless --plain-adam."""
        from diffuse_cli.train.optimizer import build_optimizer

        if plain:
            return super().optimizer(plain)
        return build_optimizer(self.net.parameters(), self.cfg.trainer, self.device)

    def loss(self, x0, t):
        return self.loss_fn(self.diffusion, self.call, x0, t)["loss"].mean()

    def sample(self, x_T):
        import diffuse_cli as dc

        return dc.sample(self.cfg, self.call, self.diffusion, x_T)


class Diffusers(Side):
    def build(self):
        from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

        from diffuse_cli.models.unet import norm_groups

        m, s = self.cfg.model, self.cfg.schedule
        assert s.name == "linear" and self.cfg.prediction.name == "eps"
        assert self.cfg.variance.name == "fixed_small" and m.num_head_channels == -1
        assert m.num_heads == 1 and not m.use_scale_shift_norm and not m.resblock_updown
        betas = dict(
            num_train_timesteps=s.num_timesteps,
            beta_schedule="linear",
            beta_start=s.beta_start,
            beta_end=s.beta_end,
        )
        if self.kind == "train":
            self.scheduler = DDPMScheduler(**betas)
        else:
            sampler = self.cfg.sampler
            self.scheduler = DDIMScheduler(**betas, clip_sample=sampler.clip_denoised)
            self.eta = sampler.eta
        sizes = [32 // 2**level for level in range(len(m.channel_mult))]
        attention = set(m.attention_resolutions)
        net = UNet2DModel(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(k * m.model_channels for k in m.channel_mult),
            layers_per_block=m.num_res_blocks,
            down_block_types=tuple(
                "AttnDownBlock2D" if r in attention else "DownBlock2D" for r in sizes
            ),
            up_block_types=tuple(
                "AttnUpBlock2D" if r in attention else "UpBlock2D" for r in reversed(sizes)
            ),
            attention_head_dim=None,  # one head per attention layer
            dropout=m.dropout,
            norm_num_groups=norm_groups(m.model_channels),
            time_embedding_type="positional",
            flip_sin_to_cos=True,  # [cos, sin]
            freq_shift=0,
        )
        for layer in net.modules():  # our group count per width (the same 32 for model=ddpm)
            if isinstance(layer, self.torch.nn.GroupNorm):
                layer.num_groups = norm_groups(layer.num_channels)
        return net

    def loss(self, x0, t):
        eps = self.torch.randn_like(x0)
        x_t = self.scheduler.add_noise(x0, eps, t)
        out = self.call(x_t, t, return_dict=False)[0]
        return self.torch.nn.functional.mse_loss(out.float(), eps.float())

    def sample(self, x_T):
        self.scheduler.set_timesteps(STEPS, device=self.device)
        x = x_T
        for t in self.scheduler.timesteps:
            eps = self.call(x, t, return_dict=False)[0]
            x = self.scheduler.step(eps, t, x, eta=self.eta, return_dict=False)[0]
        return x


IMPLS = {"ours": Ours, "diffusers": Diffusers}


def forward_flops(side: Side) -> int:
    """FLOPs of one forward pass of a batch (torch's FLOP counter: convs, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch = side.torch
    x = torch.randn(side.shape, device=side.device)
    t = torch.randint(0, 1000, (side.batch,), device=side.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        side.net(x, t)
    return counter.get_total_flops()


def train_step_flops(side: Side) -> int:
    """FLOPs of one training step of a batch, forward and backward (torch's FLOP counter), in
    train mode on the plain network; the optimizer's elementwise update is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    torch = side.torch
    x0 = torch.randn(side.shape, device=side.device)
    t = torch.randint(0, 1000, (side.batch,), device=side.device)
    call, side.call = side.call, side.net
    try:
        with FlopCounterMode(display=False) as counter:
            side.loss(x0, t).backward()
    finally:
        side.call = call
        side.net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def resident_bytes(side: Side) -> int:
    """What a side keeps on the device between repetitions: weights, buffers, Adam's state."""
    tensors = [*side.net.parameters(), *side.net.buffers()]
    if side.kind == "train":
        for state in side.opt.state.values():
            tensors += [v for v in state.values() if side.torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == side.device.type)


def in_process_peak_mib(side: Side) -> float:
    """CUDA peak of one side while the other side's network stays allocated: its resident
    state plus the most its repetition allocates on top of what was there before (a second
    process per side would compile both networks again)."""
    torch = side.torch
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    side.run()
    return (resident_bytes(side) + torch.cuda.max_memory_allocated() - before) / 2**20


def memory_worker(workload: str, impl: str, args: argparse.Namespace) -> dict:
    """Peak memory of one side of one workload, alone in this process."""
    import diffusers  # noqa: F401  both libraries loaded in every worker, so baselines agree
    import torch

    import diffuse_cli  # noqa: F401

    side = IMPLS[impl](workload, args)
    if args.compile:  # compile first; on CUDA the peak then leaves the compiler out
        side.run()
    setup = memory_status_mib("VmRSS")
    if side.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2 if side.kind == "train" else 1):  # the 2nd step has the Adam state
        side.run()
    if side.device.type == "cuda":
        return {"peak": torch.cuda.max_memory_allocated() / 2**20}
    peak = memory_status_mib("VmHWM")
    return {"peak": peak, "growth": peak - setup}


def run_memory(workload: str, impl: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--memory-worker", f"{workload}:{impl}"]
    cmd += ["--device", args.device, "--threads", str(args.threads)]
    cmd += (
        ["--bf16"] * args.bf16 + ["--compile"] * args.compile + ["--plain-adam"] * args.plain_adam
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def time_workload(workload: str, args: argparse.Namespace) -> dict:
    """Interleaved repetitions of both sides of one workload."""
    sides = {impl: IMPLS[impl](workload, args) for impl in SIDES}
    ours, theirs = sides["ours"], sides["diffusers"]
    flops = {impl: forward_flops(side) / side.batch for impl, side in sides.items()}
    if ours.kind == "train":
        train_flops = {impl: train_step_flops(s) / s.batch for impl, s in sides.items()}
    print(
        f"{workload}: parameters ours {ours.params:,} / diffusers {theirs.params:,}; "
        f"forward GFLOP per image ours {flops['ours'] / 1e9:.3f} / "
        f"diffusers {flops['diffusers'] / 1e9:.3f}",
        file=sys.stderr,
        flush=True,
    )
    for _ in range(args.warmup):
        for side in sides.values():
            side.run()
    peaks = {}
    if args.memory_in_process and ours.device.type == "cuda":
        peaks = {impl: in_process_peak_mib(side) for impl, side in sides.items()}
    times: dict[str, list[float]] = {impl: [] for impl in SIDES}
    for rep in range(args.reps):
        for impl in SIDES if rep % 2 == 0 else reversed(SIDES):
            times[impl].append(sides[impl].run())
    batch = ours.batch
    paired = [d / o for o, d in zip(times["ours"], times["diffusers"], strict=True)]
    result = {impl: batch / statistics.median(times[impl]) for impl in SIDES}
    result["unit"] = "img/s"
    result["ratio"] = result["ours"] / result["diffusers"]
    for impl in SIDES:
        result[f"{impl}_min"] = batch / max(times[impl])
        result[f"{impl}_max"] = batch / min(times[impl])
        result[f"{impl}_params"] = sides[impl].params
        result[f"{impl}_gflop_per_image"] = flops[impl] / 1e9
        if ours.kind == "train":
            result[f"{impl}_train_gflop_per_image"] = train_flops[impl] / 1e9
            result[f"{impl}_train_tflops"] = result[impl] * train_flops[impl] / 1e12
        if impl in peaks:
            result[f"{impl}_peak_mib"] = peaks[impl]
    result["ratio_paired_median"] = statistics.median(paired)
    result["ratio_iqr"] = list(quartiles(paired))
    result["batch"] = batch
    return result


def table(results: dict, args: argparse.Namespace) -> str:
    cuda = args.device.startswith("cuda")
    mem = "peak CUDA MiB" if cuda else "peak RSS MiB (growth)"
    rows = [
        f"| workload | batch | ours {results[next(iter(results))]['unit']} (min-max) "
        f"| diffusers (min-max) | ratio | paired ratio median (IQR) | {mem} ours | diffusers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        cells = []
        for impl in SIDES:
            if f"{impl}_peak_mib" not in r:
                cells.append("-")
            elif cuda:
                cells.append(f"{r[f'{impl}_peak_mib']:.0f}")
            else:
                cells.append(f"{r[f'{impl}_peak_mib']:.0f} ({r[f'{impl}_growth_mib']:.0f})")
        q1, q3 = r["ratio_iqr"]
        rows.append(
            f"| {name} | {r['batch']} | {r['ours']:.2f} ({r['ours_min']:.2f}-{r['ours_max']:.2f}) "
            f"| {r['diffusers']:.2f} ({r['diffusers_min']:.2f}-{r['diffusers_max']:.2f}) "
            f"| {r['ratio']:.2f} | {r['ratio_paired_median']:.2f} ({q1:.2f}-{q3:.2f}) "
            f"| {cells[0]} | {cells[1]} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions per side")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast on both sides")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument(
        "--workloads", default=DEFAULT_WORKLOADS, help=f"comma-separated, of {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--plain-adam",
        action="store_true",
        help="torch's default Adam on both sides (by default ours trains with the toolkit's "
        "optimizer, fused Adam)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--batch", type=int, help="one batch size for every workload")
    parser.add_argument(
        "--memory-in-process",
        action="store_true",
        help="CUDA: measure each side's peak in the timing process (resident state + the peak "
        "of a repetition) instead of a fresh subprocess per side, which compiles again",
    )
    parser.add_argument("--json", help="write {workload: {ours, diffusers, unit, ratio, ...}}")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.memory_worker:
        workload, impl = args.memory_worker.split(":")
        print(json.dumps(memory_worker(workload, impl, args)))
        return
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")

    results = {}
    for workload in workloads:
        results[workload] = time_workload(workload, args)
        if not (args.no_memory or args.memory_in_process):
            for impl in SIDES:
                peak = run_memory(workload, impl, args)
                results[workload][f"{impl}_peak_mib"] = peak["peak"]
                if "growth" in peak:
                    results[workload][f"{impl}_growth_mib"] = peak["growth"]
        r = results[workload]
        print(
            f"{workload}: ours {r['ours']:.2f} / diffusers {r['diffusers']:.2f} img/s, "
            f"ratio {r['ratio']:.2f}",
            file=sys.stderr,
            flush=True,
        )
        if "ours_train_tflops" in r:
            print(
                f"{workload}: training step GFLOP per image ours "
                f"{r['ours_train_gflop_per_image']:.2f} / diffusers "
                f"{r['diffusers_train_gflop_per_image']:.2f}; achieved TFLOP/s ours "
                f"{r['ours_train_tflops']:.2f} / diffusers {r['diffusers_train_tflops']:.2f}",
                file=sys.stderr,
                flush=True,
            )

    import diffusers

    where = f"{args.device}, {args.threads} threads" if args.device == "cpu" else args.device
    flags = "".join(
        [", bf16 autocast"] * args.bf16
        + [", torch.compile"] * args.compile
        + [", default Adam on both sides"] * args.plain_adam
    )
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, {where}{flags}; "
        f"median of {args.reps} interleaved repetitions after {args.warmup} warm-up; "
        "ratio = ours / diffusers (> 1: ours faster).\n"
    )
    print(table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
