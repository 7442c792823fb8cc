"""Sample quality per second of training: this toolkit's recipes beside diffusers' own example
recipe, each trained for the same wall-clock budgets on the embedded shapes data.

    pip install -e ".[bench]"      # diffusers, for its recipes only
    python scripts/bench_quality.py --tune-lr-at 120 [--recipes classic,quickstart,diffusers]
        [--budgets 60,120,240] [--diffusers-lrs 1e-4,3e-4,1e-3,2e-3] [--samples 500]
        [--threads 1] [--diffusers-sample-steps 100] [--out docs/benchmarks] [--work DIR]

Recipes (the dicts below; change QUICKSTART when README command 1 changes):
- classic: DDPM's L_simple on linear betas with model=small and the trainer settings that were
  the defaults when this benchmark was written, pinned here; sampled with ddpm at 50 steps.
- quickstart: README command 1's recipe (QUICKSTART: `experiment=edm_shapes`), sampled as
  README command 1 samples it.
- diffusers: diffusers' examples/unconditional_image_generation/train_unconditional.py, written
  here from its documented settings (DIFFUSERS) on a UNet2DModel of the quickstart network's
  layout, sampled with DDPMPipeline. diffusers_lr<v>: the same with learning rate v.
  diffusers_tuned (--tune-lr-at B): the same with the learning rate of --diffusers-lrs whose
  run at budget B got the lowest fd_builtin.

Every run, one after the other in this process on --threads threads: the budget becomes a step
count from a calibration run per recipe (--calibration-steps, not counted: steps per second and
the fixed seconds of a training call), so schedules that depend on the total step count end
where they should; the diffusers loop also stops at the budget. Training seconds are measured
around the training call. Then --samples images (sample i seeded by (seed, i)) are drawn and
judged as `diffuse eval metrics=[fid,pr]` judges them (the built-in extractor against the
held-out split), outside the budget. The floor is the same numbers for as many training images.

Writes quality.json, quality.md, quality.png (fd_builtin against training seconds) and
quality/<recipe>-<budget>s.png (64 samples of each run) to --out, rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import diffuse_cli as dc
from diffuse_cli.errors import UserError

# README command 1: `diffuse train experiment=edm_shapes`, then
# `diffuse sample run_dir=runs/edm_shapes sampler=heun steps=18`.
QUICKSTART = {"train": ["experiment=edm_shapes"], "sample": ["sampler=heun", "steps=18"]}
# DDPM (Ho et al. 2020) with configs/trainer/default.yaml and model=small as they were when the
# quickstart used them, pinned so that a new default leaves this baseline where it was.
# fmt: off
CLASSIC = {
    "train": [
        "schedule=linear", "prediction=eps", "variance=fixed_small", "loss=simple",
        "loss.weighting=uniform", "model=small", "model.model_channels=16",
        "model.channel_mult=[1,2,4]", "model.num_res_blocks=1", "model.attention_resolutions=[8]",
        "model.num_heads=1", "model.dropout=0.0", "trainer.batch_size=32", "trainer.lr=2e-3",
        "trainer.optimizer=adam", "trainer.betas=[0.9,0.999]", "trainer.weight_decay=0.0",
        "trainer.warmup_steps=50", "trainer.lr_decay=constant", "trainer.grad_clip=1.0",
        "trainer.grad_accum=1", "trainer.mixed_precision=no", "trainer.ema=exponential",
        "trainer.ema_decay=0.99",
    ],
    # 50 ancestral steps: as good as 100 for this recipe (docs/eval_quality.md), at half the cost
    "sample": ["sampler=ddpm", "steps=50"],
}
# fmt: on
TOOLKIT = {"classic": CLASSIC, "quickstart": QUICKSTART}
# Every toolkit run: no preview grids (sampling is not training) and no progress bar.
RUN_OVERRIDES = ["trainer.sample_num=0", "trainer.progress=false"]

# diffusers' examples/unconditional_image_generation/train_unconditional.py: its argparse
# defaults, with --use_ema as its README's commands pass it.
DIFFUSERS = {
    "train_batch_size": 16,
    "learning_rate": 1e-4,
    "adam_beta1": 0.95,
    "adam_beta2": 0.999,
    "adam_weight_decay": 1e-6,
    "adam_epsilon": 1e-8,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 500,
    "max_grad_norm": 1.0,  # accelerator.clip_grad_norm_(model.parameters(), 1.0)
    "use_ema": True,
    "ema_inv_gamma": 1.0,
    "ema_power": 0.75,
    "ema_max_decay": 0.9999,
    "ddpm_num_steps": 1000,
    "ddpm_beta_schedule": "linear",
    "prediction_type": "epsilon",  # loss: mean squared error of the predicted noise
    "ddpm_num_inference_steps": 1000,  # DDPMPipeline's steps; --diffusers-sample-steps here
}
DIFFUSERS_RECIPES = ("diffusers", "diffusers_tuned")
LR_PREFIX = "diffusers_lr"
GRID = 64  # samples saved per run


@dataclass
class Calibration:
    """A training call of n steps takes overhead + n / rate seconds."""

    rate: float  # steps per second, past the first steps
    overhead: float  # seconds of a call that are not steps: data, network, first steps, saving
    steps: int
    seconds: float

    @classmethod
    def measured(cls, seconds: float, steps: int, rate: float) -> Calibration:
        return cls(rate, max(0.0, seconds - steps / rate), steps, seconds)

    def steps_for(self, budget: float) -> int:
        """The step count whose training call takes `budget` seconds (at least 1)."""
        return max(1, math.floor((budget - self.overhead) * self.rate))


def is_diffusers(recipe: str) -> bool:
    return recipe in DIFFUSERS_RECIPES or recipe.startswith(LR_PREFIX)


def family(recipe: str) -> str:
    """What a recipe is calibrated as: 'diffusers' for every diffusers recipe (the learning rate
    does not change the cost of a step), else its own name."""
    return "diffusers" if is_diffusers(recipe) else recipe


def lr_of(recipe: str, tuned: float | None = None) -> float:
    """The learning rate of a diffusers recipe."""
    if recipe.startswith(LR_PREFIX):
        return float(recipe[len(LR_PREFIX) :])
    if recipe == "diffusers_tuned":
        if tuned is None:
            raise UserError("recipe diffusers_tuned needs the sweep: add --tune-lr-at SECONDS")
        return tuned
    return DIFFUSERS["learning_rate"]


def check_recipes(recipes: list[str], tune: bool) -> None:
    for r in recipes:
        if r not in TOOLKIT and not is_diffusers(r):
            raise UserError(
                f"unknown recipe {r!r}; choose from {', '.join([*TOOLKIT, *DIFFUSERS_RECIPES])} "
                f"or {LR_PREFIX}<learning rate>"
            )
        if r.startswith(LR_PREFIX):
            try:
                lr_of(r)
            except ValueError as err:
                raise UserError(
                    f"recipe {r!r}: write the learning rate as in {LR_PREFIX}3e-4"
                ) from err
    if "diffusers_tuned" in recipes and not tune:
        raise UserError("recipe diffusers_tuned needs the sweep: add --tune-lr-at SECONDS")


def best_lr(sweep: dict[float, float]) -> float:
    """The learning rate of the lowest finite fd in {lr: fd}."""
    finite = {lr: fd for lr, fd in sweep.items() if fd is not None and math.isfinite(fd)}
    if not finite:
        raise UserError(f"no run of the learning-rate sweep has a finite fd_builtin: {sweep}")
    return min(finite, key=finite.get)


# ---- the judge: diffuse eval's sampling, extractor, reference and metrics ----------------------


class Judge:
    """fd_builtin, precision_builtin and recall_builtin of `num` images against the held-out
    split, through the functions `diffuse eval metrics=[fid,pr]` runs."""

    def __init__(self, num: int, work: Path, device: torch.device):
        from diffuse_cli.distributed import process_state
        from diffuse_cli.evaluate.features import build_extractor
        from diffuse_cli.evaluate.quality import check_sample_count
        from diffuse_cli.evaluate.reference import reference_features, reference_size

        self.num, self.work, self.device = num, work, device
        self.cfg = dc.compose_config(self.overrides(), "eval")
        check_sample_count(self.cfg, ["fd", "pr"], num, "--samples")
        self.extractor = build_extractor(self.cfg, device)
        size = reference_size(self.cfg)
        self.reference = reference_features(self.cfg, self.extractor, device, process_state(), size)

    def overrides(self) -> list[str]:
        cache = self.work / "reference_stats"
        return [
            "metrics=[fid,pr]",
            f"eval.num_samples={self.num}",
            f"eval.cache_dir={cache}",
            "eval.features=builtin",
            "progress=false",
        ]

    def __call__(self, source) -> tuple[dict, torch.Tensor, float]:
        """(metrics, the first GRID images, seconds) of the images that source(range) gives."""
        from diffuse_cli.evaluate.quality import extract_share, image_metrics
        from diffuse_cli.sampling_loop import index_batches

        kept: list[torch.Tensor] = []

        def keeping(chunk: range) -> torch.Tensor:
            x = source(chunk)
            kept.append(x[: max(0, GRID - sum(len(k) for k in kept))].cpu())
            return x

        start = time.perf_counter()

        def batches(indices: range):
            for chunk in index_batches(indices, self.cfg.batch_size):
                yield chunk, keeping(chunk)

        gathered = extract_share(self.cfg, batches, range(self.num), self.extractor, False)
        metrics = image_metrics(self.cfg, ["fd", "pr"], gathered, self.reference, self.extractor)
        return metrics, torch.cat(kept), time.perf_counter() - start

    def describe(self) -> dict:
        ref = self.reference
        return {
            "extractor": {"name": self.extractor.name, **self.extractor.implementation},
            "reference": {"split": ref["split"], "num": ref["num"]},
            "pr_neighborhood": self.cfg.eval.pr_neighborhood,
        }


def training_images(num: int | None = None) -> torch.Tensor:
    """The shapes train split (its first `num` images) in [-1, 1], NCHW."""
    from diffuse_cli.build import build_data

    data = build_data(dc.compose_config([], "train"), "train")
    return torch.stack([data[i][0] for i in range(len(data) if num is None else num)])


# ---- this toolkit's recipes: trained and sampled through the toolkit itself ------------------


def toolkit_config(recipe: str, run_dir: Path, max_steps: int, log_every: int | None = None):
    overrides = [
        *TOOLKIT[recipe]["train"],
        *RUN_OVERRIDES,
        f"run_dir={run_dir}",
        f"trainer.max_steps={max_steps}",
    ]
    if log_every:
        overrides.append(f"trainer.log_every={log_every}")
    return dc.compose_config(overrides, "train")


def train_toolkit(cfg) -> float:
    """Seconds of `diffuse train` with `cfg`, in this process, into a fresh run folder."""
    from diffuse_cli.train.trainer import train

    shutil.rmtree(cfg.run_dir, ignore_errors=True)  # a run there would be resumed
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def calibrate_toolkit(recipe: str, work: Path, steps: int) -> Calibration:
    """Steps per second from the second half of a `steps`-step run (metrics.jsonl's img/s,
    which leaves out saving); the rest of the call's seconds are its fixed cost. The second of
    two such runs: the first pays what a process pays once (imports, first allocations)."""
    half = max(1, steps // 2)
    cfg = toolkit_config(recipe, work / f"calibrate-{recipe}", 2 * half, log_every=half)
    # A step costs the same under any learning-rate schedule; a decay shorter than the warm-up
    # would be refused.
    cfg.trainer.lr_decay = "constant"
    for _ in range(2):
        seconds = train_toolkit(cfg)
    rows = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
    rate = json.loads(rows[-1])["img_per_s"] / cfg.trainer.batch_size
    return Calibration.measured(seconds, 2 * half, rate)


def toolkit_source(recipe: str, run_dir: Path, judge: Judge):
    """(source(range) -> samples, settings): the run's EMA weights sampled as `diffuse eval`
    samples them, with the recipe's sampler."""
    from diffuse_cli.evaluate.command import check_eval_config
    from diffuse_cli.evaluate.quality import sample_source
    from diffuse_cli.loading import open_run
    from diffuse_cli.runs import with_run_config

    overrides = [f"run_dir={run_dir}", *judge.overrides(), *TOOLKIT[recipe]["sample"]]
    cfg = with_run_config(dc.compose_config(overrides, "eval"), run_dir, also=("loss",))
    check_eval_config(cfg)

    def load_model():
        _, model, diffusion, weights = open_run(run_dir, judge.device, True, config=cfg)
        return model, diffusion, weights

    batches, _, tag, _, provenance = sample_source(cfg, load_model, judge.device)

    def source(chunk: range) -> torch.Tensor:
        return torch.cat([x for _, x in batches(chunk)])

    return source, {"tag": tag, "sampler": provenance["sampler"], "steps": provenance["steps"]}


def toolkit_parameters(recipe: str) -> int:
    with torch.device("meta"):
        model = dc.build_model(dc.compose_config(TOOLKIT[recipe]["train"], "train"))
    return sum(p.numel() for p in model.parameters())


# ---- diffusers' example recipe, written from its documented settings --------------------------


def diffusers_unet():
    """UNet2DModel with the quickstart network's layout (levels, widths, residual blocks,
    attention resolutions, heads), through the export's mapping; one GroupNorm group count for
    every width, as UNet2DModel has one: the first level's, which divides the wider ones."""
    from diffusers import UNet2DModel

    from diffuse_cli.interop.diffusers_export import unet_config_of
    from diffuse_cli.models.unet import norm_groups

    width = dc.compose_config(QUICKSTART["train"], "train").model.model_channels
    cfg = dc.compose_config([*QUICKSTART["train"], f"model.norm_groups={norm_groups(width)}"])
    with torch.device("meta"):
        ours = dc.build_model(cfg)
    config, _ = unet_config_of(cfg, ours)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config |= {"in_channels": 3, "out_channels": 3, "num_class_embeds": None}  # eps, no labels
    return UNet2DModel(**config)


def diffusers_scheduler(s: dict = DIFFUSERS):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=s["ddpm_num_steps"],
        beta_schedule=s["ddpm_beta_schedule"],
        prediction_type=s["prediction_type"],
    )


def diffusers_ema(unet, s: dict = DIFFUSERS):
    from diffusers import UNet2DModel
    from diffusers.training_utils import EMAModel

    return EMAModel(
        unet.parameters(),
        decay=s["ema_max_decay"],
        use_ema_warmup=True,
        inv_gamma=s["ema_inv_gamma"],
        power=s["ema_power"],
        model_cls=UNet2DModel,
        model_config=unet.config,
    )


def diffusers_lr_schedule(optimizer, max_steps: int, s: dict = DIFFUSERS):
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        s["lr_scheduler"],
        optimizer=optimizer,
        num_warmup_steps=s["lr_warmup_steps"],
        num_training_steps=max_steps,
    )


def train_diffusers(lr: float, max_steps: int, budget: float | None, seed: int, device) -> dict:
    """The recipe's training loop for `max_steps` steps, or until `budget` seconds have passed
    since the call began: {"unet" (its EMA weights with use_ema), "steps", "seconds",
    "step_times"}."""
    import torch.nn.functional as F

    s = DIFFUSERS
    start = time.perf_counter()
    torch.manual_seed(seed)
    images = training_images().to(device)
    unet = diffusers_unet().to(device).train()
    scheduler = diffusers_scheduler()
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=lr,
        betas=(s["adam_beta1"], s["adam_beta2"]),
        weight_decay=s["adam_weight_decay"],
        eps=s["adam_epsilon"],
    )
    schedule = diffusers_lr_schedule(optimizer, max_steps)
    ema = diffusers_ema(unet) if s["use_ema"] else None
    order = torch.Generator().manual_seed(seed)  # the data loader's shuffling
    steps, step_times = 0, []

    def going() -> bool:  # at least one step, as the toolkit's runs take
        in_time = budget is None or steps == 0 or time.perf_counter() - start < budget
        return steps < max_steps and in_time

    while going():
        for batch in torch.randperm(len(images), generator=order).split(s["train_batch_size"]):
            if not going():
                break
            x0 = images[batch.to(device)]
            noise = torch.randn(x0.shape, device=device)
            t = torch.randint(0, s["ddpm_num_steps"], (len(x0),), device=device)
            pred = unet(scheduler.add_noise(x0, noise, t), t).sample
            F.mse_loss(pred.float(), noise.float()).backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), s["max_grad_norm"])
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(unet.parameters())
            steps += 1
            step_times.append(time.perf_counter() - start)
    if ema is not None:
        ema.copy_to(unet.parameters())
    seconds = time.perf_counter() - start
    return {"unet": unet.eval(), "steps": steps, "seconds": seconds, "step_times": step_times}


def calibrate_diffusers(steps: int, seed: int, device) -> Calibration:
    """As calibrate_toolkit: the rate of the second half of the steps, the rest fixed cost, from
    the second of two runs."""
    half = max(1, steps // 2)
    for _ in range(2):
        run = train_diffusers(DIFFUSERS["learning_rate"], 2 * half, None, seed, device)
    times = run["step_times"]
    rate = half / (times[-1] - times[half - 1])
    return Calibration.measured(run["seconds"], 2 * half, rate)


def diffusers_source(unet, steps: int, seed: int, device):
    """DDPMPipeline (the ancestral DDPMScheduler) at `steps` inference steps; sample i from a
    generator seeded by (seed, i), so a sample does not depend on the batch it is drawn in."""
    from diffusers import DDPMPipeline

    from diffuse_cli.sampling_loop import sample_seed

    pipeline = DDPMPipeline(unet=unet, scheduler=diffusers_scheduler())
    pipeline.set_progress_bar_config(disable=True)

    def source(chunk: range) -> torch.Tensor:
        generators = [torch.Generator(device).manual_seed(sample_seed(seed, i)) for i in chunk]
        out = pipeline(
            batch_size=len(chunk), generator=generators, num_inference_steps=steps, output_type="np"
        ).images
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(device) * 2 - 1

    return source


def diffusers_version() -> str | None:
    try:
        import diffusers
    except ImportError:
        return None
    return diffusers.__version__


# ---- the runs -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, argv: list[str]):
        self.args, self.argv = args, argv
        self.out = Path(args.out)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="diffuse-bench-quality-"))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.calibrations: dict[str, Calibration] = {}
        self.runs: list[dict] = []
        self.sweep: dict | None = None
        self.tuned_lr: float | None = None
        self.record: dict = {}

    def main(self) -> None:
        args = self.args
        budgets = args.budgets
        recipes = [r for r in args.recipes.split(",") if r]
        tune = bool(args.tune_lr_at)
        if tune and "diffusers_tuned" not in recipes:
            recipes.append("diffusers_tuned")
        swept = [f"{LR_PREFIX}{lr}" for lr in args.diffusers_lrs.split(",")] if tune else []
        check_recipes(recipes + swept, tune)
        torch.set_num_threads(args.threads)
        self.judge = Judge(args.samples, self.work, self.device)
        self.header(recipes, budgets)
        real = training_images(args.samples)
        floor, grid, _ = self.judge(lambda chunk: real[chunk.start : chunk.stop])
        self.record["floor"] = {
            "what": f"{args.samples} training images vs the held-out split",
            "metrics": floor,
            "grid": self.save_grid(grid, "data"),
        }
        if args.keep:
            self.keep_earlier(recipes, tune)
        self.write()
        if tune:
            self.tune(args.tune_lr_at)
        for budget in budgets:
            for recipe in recipes:
                self.runs.append(self.reused(recipe, budget) or self.run(recipe, budget))
                self.write()
        print(markdown(self.record))

    def keep_earlier(self, recipes: list[str], tune: bool) -> None:
        """Keep the runs of --out's quality.json whose recipes this invocation does not run (and
        its learning-rate sweep unless this one tunes), so recipes can be measured in turns."""
        path = self.out / "quality.json"
        if not path.is_file():
            raise UserError(f"--keep: {path} does not exist; run once without --keep first")
        old = json.loads(path.read_text())
        if old["threads"] != self.record["threads"] or old["samples"] != self.args.samples:
            raise UserError(f"--keep: {path} was measured with other --threads or --samples")
        self.runs = [r for r in old["runs"] if r["recipe"] not in recipes]
        kept = {r["recipe"] for r in self.runs}
        self.record["recipes"] = {
            r: d for r, d in old["recipes"].items() if r in kept
        } | self.record["recipes"]
        self.record["command"] = f"{old['command']}\n    {self.record['command']}"
        self.calibrations = {
            k: Calibration(**c)
            for k, c in old["calibrations"].items()
            if k in {family(r) for r in kept}
        }
        if not tune and old.get("lr_sweep"):
            self.sweep = old["lr_sweep"]
            self.tuned_lr = self.sweep["best_lr"]

    def calibration(self, recipe: str) -> Calibration:
        key = family(recipe)
        if key not in self.calibrations:
            steps, seed = self.args.calibration_steps, self.args.seed
            if key == "diffusers":
                found = calibrate_diffusers(steps, seed, self.device)
            else:
                found = calibrate_toolkit(key, self.work, steps)
            self.calibrations[key] = found
            note(f"calibrated {key}: {found.rate:.2f} steps/s, {found.overhead:.1f} s fixed")
        return self.calibrations[key]

    def run(self, recipe: str, budget: float) -> dict:
        """Train `recipe` for `budget` seconds, sample, judge, save the grid."""
        max_steps = self.calibration(recipe).steps_for(budget)
        row = {"recipe": recipe, "budget_s": budget, "max_steps": max_steps}
        if is_diffusers(recipe):
            lr = lr_of(recipe, self.tuned_lr)
            trained = train_diffusers(lr, max_steps, budget, self.args.seed, self.device)
            steps = self.args.diffusers_sample_steps
            source = diffusers_source(trained["unet"], steps, self.args.seed, self.device)
            row |= {
                "lr": lr,
                "steps": trained["steps"],
                "train_s": trained["seconds"],
                "sampler": {"name": "DDPMPipeline", "num_inference_steps": steps},
            }
        else:
            run_dir = self.work / f"{recipe}-{budget:g}s"
            seconds = train_toolkit(toolkit_config(recipe, run_dir, max_steps))
            source, sampler = toolkit_source(recipe, run_dir, self.judge)
            row |= {"steps": max_steps, "train_s": seconds, "sampler": sampler}
        metrics, grid, judge_s = self.judge(source)
        row |= {
            "sample_and_judge_s": judge_s,
            "metrics": metrics,
            "grid": self.save_grid(grid, f"{recipe}-{budget:g}s"),
        }
        note(
            f"{recipe} at {budget:g} s: {row['steps']} steps in {row['train_s']:.1f} s, "
            f"fd_builtin {metrics['fd_builtin']:.4g}"
        )
        return row

    def tune(self, budget: float) -> None:
        """The learning-rate sweep of the diffusers recipe at one budget; its best is tuned."""
        self.sweep = {"budget_s": budget, "runs": [], "best_lr": None}
        for lr in self.args.diffusers_lrs.split(","):
            self.sweep["runs"].append(self.run(f"{LR_PREFIX}{lr}", budget))
            self.write()
        self.tuned_lr = best_lr({r["lr"]: r["metrics"]["fd_builtin"] for r in self.sweep["runs"]})
        self.sweep["best_lr"] = self.tuned_lr
        note(f"diffusers_tuned: learning rate {self.tuned_lr:g}")

    def reused(self, recipe: str, budget: float) -> dict | None:
        """diffusers_tuned at the sweep's budget is the sweep's run of that learning rate."""
        if recipe != "diffusers_tuned" or budget != self.sweep["budget_s"]:
            return None
        best = next(r for r in self.sweep["runs"] if r["lr"] == self.tuned_lr)
        return best | {"recipe": recipe, "from_sweep": True}

    def save_grid(self, images: torch.Tensor, name: str) -> str:
        from torchvision.utils import save_image

        path = self.out / "quality" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image((images.float() + 1) / 2, path, nrow=8, padding=1)
        return str(path.relative_to(self.out))

    def header(self, recipes: list[str], budgets: list[float]) -> None:
        from diffuse_cli.version import __version__

        unet = diffusers_unet() if any(is_diffusers(r) for r in recipes) else None
        self.record = {
            "command": "python scripts/bench_quality.py " + " ".join(self.argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": {
                "node": platform.node(),
                "device": str(self.device),
                "processor": platform.processor() or platform.machine(),
            },
            "threads": torch.get_num_threads(),
            "versions": {
                "torch": torch.__version__,
                "diffusers": diffusers_version(),
                "diffuse": __version__,
                "python": platform.python_version(),
            },
            "budgets_s": budgets,
            "samples": self.args.samples,
            "seed": self.args.seed,
            "calibration_steps": self.args.calibration_steps,
            "judge": self.judge.describe(),
            "recipes": {r: self.describe(r, unet) for r in recipes},
            "diffusers_unet": unet and {k: v for k, v in unet.config.items() if k[0] != "_"},
        }

    def describe(self, recipe: str, unet) -> dict:
        if is_diffusers(recipe):
            lr = "tuned" if recipe == "diffusers_tuned" else lr_of(recipe)
            sample = {
                "pipeline": "DDPMPipeline",
                "num_inference_steps": self.args.diffusers_sample_steps,
            }
            return {
                "kind": "diffusers",
                "settings": DIFFUSERS | {"learning_rate": lr},
                "parameters": sum(p.numel() for p in unet.parameters()),
                "sample": sample,
            }
        return {
            "kind": "toolkit",
            "train_overrides": TOOLKIT[recipe]["train"],
            "run_overrides": RUN_OVERRIDES,
            "sample": TOOLKIT[recipe]["sample"],
            "parameters": toolkit_parameters(recipe),
        }

    def write(self) -> None:
        from diffuse_cli.evaluate.output import strict

        self.record |= {
            "calibrations": {k: asdict(c) for k, c in self.calibrations.items()},
            "lr_sweep": self.sweep,
            "runs": self.runs,
            "ratios": ratios(self.runs),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "quality.json").write_text(json.dumps(strict(self.record), indent=1) + "\n")
        (self.out / "quality.md").write_text(markdown(self.record))
        plot(self.record, self.out / "quality.png")


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ratios(runs: list[dict]) -> list[dict]:
    """Per budget: the best toolkit recipe's fd_builtin over diffusers_tuned's (without it, over
    the best diffusers recipe's at that budget)."""
    out = []
    for budget in sorted({r["budget_s"] for r in runs}):
        here = [r for r in runs if r["budget_s"] == budget]
        ours = [r for r in here if not is_diffusers(r["recipe"])]
        theirs = [r for r in here if r["recipe"] == "diffusers_tuned"]
        theirs = theirs or [r for r in here if is_diffusers(r["recipe"])]
        if not (ours and theirs):
            continue
        a = min(ours, key=lambda r: r["metrics"]["fd_builtin"])
        b = min(theirs, key=lambda r: r["metrics"]["fd_builtin"])
        fd_a, fd_b = a["metrics"]["fd_builtin"], b["metrics"]["fd_builtin"]
        out.append(
            {
                "budget_s": budget,
                "toolkit": a["recipe"],
                "toolkit_fd": fd_a,
                "diffusers": b["recipe"],
                "diffusers_fd": fd_b,
                "ratio": fd_a / fd_b if fd_b > 0 else None,
            }
        )
    return out


# ---- markdown and plot ------------------------------------------------------------------------


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def recipe_lines(record: dict) -> list[str]:
    lines = ["| recipe | settings | parameters | sampled with |", "| --- | --- | ---: | --- |"]
    for name, r in record["recipes"].items():
        if r["kind"] == "toolkit":
            overrides = " ".join(r["train_overrides"]) or "(none: the default config)"
            what, sample = f"`{overrides}`", f"`{' '.join(r['sample'])}`"
        else:
            what = (
                f"diffusers' example recipe (below), learning rate {r['settings']['learning_rate']}"
            )
            sample = f"DDPMPipeline, {r['sample']['num_inference_steps']} steps"
        lines.append(f"| {name} | {what} | {r['parameters']:,} | {sample} |")
    return lines


def diffusers_text(record: dict) -> list[str]:
    s, u = DIFFUSERS, record["diffusers_unet"]
    if u is None:
        return []
    steps = next(
        r["sample"]["num_inference_steps"]
        for r in record["recipes"].values()
        if r["kind"] == "diffusers"
    )
    return [
        "The diffusers recipe is diffusers' `examples/unconditional_image_generation/"
        "train_unconditional.py` as documented (its argparse defaults; `--use_ema` as its README's "
        "commands pass it), written in this script from those settings: a `UNet2DModel`, "
        f"`DDPMScheduler` ({s['ddpm_num_steps']} steps, {s['ddpm_beta_schedule']} betas, "
        f"{s['prediction_type']} prediction), the mean squared error of the predicted noise, "
        f"`AdamW` (learning rate {s['learning_rate']:g}, betas ({s['adam_beta1']}, "
        f"{s['adam_beta2']}), weight decay {s['adam_weight_decay']:g}, eps "
        f"{s['adam_epsilon']:g}), a {s['lr_scheduler']} learning-rate schedule after "
        f"{s['lr_warmup_steps']} warm-up steps that ends at the run's calibrated step count, "
        f"gradients clipped at norm {s['max_grad_norm']:g}, `EMAModel` with its warm-up "
        f"(inv_gamma {s['ema_inv_gamma']:g}, power {s['ema_power']:g}, max decay "
        f"{s['ema_max_decay']}), batch {s['train_batch_size']} of shuffled training images. Its "
        f"network has the quickstart network's layout: block_out_channels "
        f"{list(u['block_out_channels'])}, layers_per_block {u['layers_per_block']}, "
        f"{', '.join(u['down_block_types'])}, norm_num_groups {u['norm_num_groups']} (one count "
        f"for every width, as UNet2DModel has one). It is sampled with `DDPMPipeline` (the "
        f"ancestral `DDPMScheduler`) at num_inference_steps={steps}: the script's own default, "
        f"{s['ddpm_num_inference_steps']}, costs too much for {record['samples']} samples per run.",
        "",
    ]


def result_lines(record: dict) -> list[str]:
    lines = [
        "| recipe | budget s | steps | train s | sample + judge s | fd_builtin | precision "
        "| recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(record["runs"], key=lambda r: (r["recipe"], r["budget_s"])):
        m = r["metrics"]
        reused = " (the sweep's run)" if r.get("from_sweep") else ""
        lines.append(
            f"| {r['recipe']}{reused} | {r['budget_s']:g} | {r['steps']} | {r['train_s']:.1f} | "
            f"{r['sample_and_judge_s']:.1f} | {_num(m['fd_builtin'])} | "
            f"{_num(m['precision_builtin'])} | {_num(m['recall_builtin'])} |"
        )
    m = record["floor"]["metrics"]
    lines += [
        "",
        f"Floor ({record['floor']['what']}): fd_builtin {_num(m['fd_builtin'])}, "
        f"precision {_num(m['precision_builtin'])}, recall {_num(m['recall_builtin'])}.",
    ]
    return lines


def warmup_note(record: dict) -> list[str]:
    runs = record["runs"] + (record["lr_sweep"] or {}).get("runs", [])
    warmup = DIFFUSERS["lr_warmup_steps"]
    short = sorted({r["budget_s"] for r in runs if "lr" in r and r["steps"] < warmup})
    if not short:
        return []
    budgets = ", ".join(f"{b:g} s" for b in short)
    return [
        "",
        f"At {budgets} diffusers runs take fewer steps than the recipe's {warmup} "
        "warm-up steps: their learning rate never reaches its peak there.",
    ]


def ratio_lines(record: dict) -> list[str]:
    if not record["ratios"]:
        return []
    lines = [
        "",
        "## Our best recipe against diffusers",
        "",
        "The target: a ratio of at most 1/3 at every budget.",
        "",
        "| budget s | our best | fd_builtin | diffusers | fd_builtin | ratio |",
        "| ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for q in record["ratios"]:
        lines.append(
            f"| {q['budget_s']:g} | {q['toolkit']} | {_num(q['toolkit_fd'])} | "
            f"{q['diffusers']} | {_num(q['diffusers_fd'])} | {_num(q['ratio'])} |"
        )
    return lines + catch_up(record)


def catch_up(record: dict) -> list[str]:
    """The shortest budget at which our best recipe is as close to the data as the diffusers
    recipe at the longest budget (the target, put the other way: within a third of the time)."""
    last = record["ratios"][-1]
    reached = [q["budget_s"] for q in record["ratios"] if q["toolkit_fd"] <= last["diffusers_fd"]]
    when = f"at {min(reached):g} s" if reached else "at none of the budgets"
    return [
        "",
        f"{last['diffusers']} at {last['budget_s']:g} s reaches fd_builtin "
        f"{_num(last['diffusers_fd'])}; our best recipe reaches it {when}.",
    ]


def sweep_lines(record: dict) -> list[str]:
    sweep = record["lr_sweep"]
    if not sweep:
        return []
    lines = [
        "",
        f"## Learning rate of the diffusers recipe, swept at {sweep['budget_s']:g} s",
        "",
        "| learning rate | steps | train s | fd_builtin | precision | recall |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sweep["runs"]:
        m = r["metrics"]
        lines.append(
            f"| {r['lr']:g} | {r['steps']} | {r['train_s']:.1f} | "
            f"{_num(m['fd_builtin'])} | {_num(m['precision_builtin'])} | "
            f"{_num(m['recall_builtin'])} |"
        )
    if sweep["best_lr"] is not None:
        lines += ["", f"diffusers_tuned takes the lowest fd_builtin's: {sweep['best_lr']:g}."]
    return lines


def markdown(record: dict) -> str:
    j, v, h = record["judge"], record["versions"], record["host"]
    runs = record["runs"] + (record["lr_sweep"] or {}).get("runs", [])
    grids = [f"[{r['recipe']} {r['budget_s']:g} s]({r['grid']})" for r in runs]
    lines = [
        "# Sample quality per second of training, beside diffusers' example recipe",
        "",
        "Written by `scripts/bench_quality.py`:",
        "",
        f"    {record['command']}",
        "",
        f"{record['date']}; {h['node']} ({h['processor']}), device {h['device']}, "
        f"{record['threads']} torch thread(s); torch {v['torch']}, diffusers {v['diffusers']}, "
        f"diffuse {v['diffuse']}, python {v['python']}.",
        "",
        "Each recipe trains on the embedded shapes data (train split) for each wall-clock budget, "
        "one run after the other in one process. A budget becomes a step count from a "
        f"calibration run of {record['calibration_steps']} steps per recipe (not counted; the "
        "second of two, so that what a process pays once stays out): steps per second, and the "
        "fixed seconds of a training call (data, network, optimizer, first steps, saving), so "
        "learning-rate schedules that depend on the total step count end "
        "where they should. The diffusers loop also stops at the budget. *train s* is measured "
        "around the training call; sampling and judging are outside the budget (*sample + judge "
        f"s*). Each run draws {record['samples']} samples (sample i seeded by (seed "
        f"{record['seed']}, i)), judged as `diffuse eval metrics=[fid,pr]` judges them: the "
        f"built-in extractor (weights {j['extractor']['weights_sha256']}) against the "
        f"{j['reference']['num']} images of the {j['reference']['split']} split, precision and "
        f"recall with k = {j['pr_neighborhood']}. The floor is the same numbers for as many "
        "training images.",
        "",
        "## Recipes",
        "",
        *recipe_lines(record),
        "",
        f"Toolkit runs also take `{' '.join(RUN_OVERRIDES)}` (no preview grids while training) "
        "and the step count.",
        "",
        *diffusers_text(record),
        "## Results",
        "",
        *result_lines(record),
        *warmup_note(record),
        *ratio_lines(record),
        *sweep_lines(record),
        "",
        "## Samples",
        "",
        f"64 samples of each run: {', '.join(grids) or 'none yet'}; of the data: "
        f"[training images]({record['floor']['grid']}).",
        "",
        "![fd_builtin against training seconds](quality.png)",
    ]
    return "\n".join(lines) + "\n"


def plot(record: dict, path: Path) -> None:
    """fd_builtin against training seconds, one line per recipe, log y; the floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for recipe in dict.fromkeys(r["recipe"] for r in record["runs"]):
        points = sorted(
            (r["train_s"], r["metrics"]["fd_builtin"])
            for r in record["runs"]
            if r["recipe"] == recipe and math.isfinite(r["metrics"]["fd_builtin"])
        )
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=recipe)
    floor = record["floor"]["metrics"]["fd_builtin"]
    if math.isfinite(floor) and floor > 0:
        ax.axhline(floor, linestyle="--", color="grey", label="floor (data vs data)")
    ax.set_yscale("log")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("fd_builtin")
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def numbers(text: str) -> list[float]:
    """'60,120,240' -> [60.0, 120.0, 240.0] (argparse reports a ValueError as a bad value)."""
    return [float(v) for v in text.split(",")]


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes",
        default="classic,quickstart,diffusers",
        help="classic, quickstart, diffusers, diffusers_lr<v>, diffusers_tuned",
    )
    parser.add_argument(
        "--budgets", type=numbers, default="60,120,240", help="training seconds per run"
    )
    parser.add_argument(
        "--tune-lr-at",
        type=float,
        default=None,
        metavar="SECONDS",
        help="sweep --diffusers-lrs at this budget; adds diffusers_tuned",
    )
    parser.add_argument("--diffusers-lrs", default="1e-4,3e-4,1e-3,2e-3")
    parser.add_argument(
        "--diffusers-sample-steps", type=int, default=100, help="DDPMPipeline's num_inference_steps"
    )
    parser.add_argument("--samples", type=int, default=500, help="samples judged per run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--calibration-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep --out's earlier runs of the recipes not run now (measure recipes in turns)",
    )
    parser.add_argument(
        "--work", default=None, help="run folders (replaced); default: a new temporary folder"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        Bench(parse_args(argv), argv).main()
    except UserError as err:
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main()
