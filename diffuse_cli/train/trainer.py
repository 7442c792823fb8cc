"""The training loop on Accelerate: one process or many, CPU or GPUs, fp32/fp16/bf16.

Randomness is a function of (seed, step, micro-batch, rank): the batch order, the timesteps, the
noise, dropout and flips. A resumed run therefore repeats exactly what an uninterrupted run with
the same number of processes would have done, and the checkpoint only has to hold weights, EMA,
optimizer state, the step and the timestep sampler's state (the importance sampler's loss
history, which every process updates with the same gathered (t, loss) pairs of each step that
was not skipped, after the step).
"""

from __future__ import annotations

import hashlib
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from diffuse_cli.build import build_data, data_shape
from diffuse_cli.data import DataError, random_hflip
from diffuse_cli.diffusion import EDMDiffusion, LogNormalSigmas, get_timestep_sampler
from diffuse_cli.distributed import broadcast_from_main, check_joined
from diffuse_cli.errors import Interrupted, UserError
from diffuse_cli.files import write_atomically
from diffuse_cli.runs import CONFIG_FILE, hydra_output_dir, hydra_overrides
from diffuse_cli.train.batches import StepBatchSampler, step_seed
from diffuse_cli.train.checkpoint import (
    latest_checkpoint,
    load_state_checked,
    read_checkpoint,
    save_checkpoint,
)
from diffuse_cli.train.ema import EMA, PowerEMA
from diffuse_cli.train.ema_snapshots import discard_snapshots_after, write_snapshot
from diffuse_cli.train.loggers import MetricsFile, make_logger
from diffuse_cli.train.optimizer import build_optimizer, learning_rate, load_optimizer_state
from diffuse_cli.train.preview import save_training_preview
from diffuse_cli.train.run_lock import RunLock
from diffuse_cli.train.tasks import make_task
from diffuse_cli.train.validate import check_resumable, resumed_config, validate_train_config


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors, in key order: equal digests, bit-identical weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class StopSignals:
    """SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 (Slurm's warning before a time limit or pre-emption,
    as `--signal` names it; submitit's default is USR2) ask the loop to stop after the current
    step, with a checkpoint. A second SIGINT stops at once (KeyboardInterrupt). Under several
    processes the request is shared, so all stop at the same step; outside the main thread (no
    signal handlers there) nothing is installed.

    After the checkpoint, `forward` hands the signal to the handler that was there before, if it
    is a program's own (e.g. submitit's, which requeues the Slurm job and exits): the requeued
    job then resumes from that checkpoint."""

    SIGNALS = tuple(
        s
        for s in (
            signal.SIGTERM,
            signal.SIGINT,
            *(getattr(signal, n, None) for n in ("SIGUSR1", "SIGUSR2")),
        )
        if s
    )

    def __init__(self):
        self.signum = 0
        self.previous = {}
        try:
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread
            self.restore()

    def _handle(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def received(self, accelerator) -> int:
        """The signal number asked to stop (on any process), else 0."""
        if accelerator.num_processes == 1:
            return self.signum
        flag = torch.tensor(self.signum, device=accelerator.device)
        return int(accelerator.reduce(flag, "max"))

    def forward(self, signum: int) -> None:
        """Call the previous handler of `signum` unless it is Python's or the system's default."""
        handler = self.previous.get(signum)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signum, None)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}


def train(cfg: DictConfig) -> Path:
    """Train (or resume) the run described by `cfg`; returns the run directory."""
    return Trainer(cfg).fit()


class Trainer:
    def __init__(self, cfg: DictConfig):
        self.run_dir = hydra_output_dir() or Path(cfg.run_dir)
        command_line = hydra_overrides() if hydra_output_dir() else None
        cfg = resumed_config(cfg, self.run_dir, command_line)  # a resume: the run's settings
        validate_train_config(cfg, fresh=latest_checkpoint(self.run_dir) is None)
        self.cfg, self.tc = cfg, cfg.trainer
        self.accelerator = self._setup_accelerator()
        self.lock = self._lock_run_dir()
        try:
            self._setup(cfg)
        except BaseException:
            if self.lock is not None:  # a refused start leaves no lock file or folder of its own
                self.lock.release(tidy=True)
            raise

    def _setup(self, cfg: DictConfig) -> None:
        check_resumable(cfg, self.run_dir)
        self.dataset = build_data(cfg, "train", every_process=True)
        self.task = make_task(cfg, self.dataset)
        self.diffusion = self.task.diffusion
        if isinstance(self.diffusion, EDMDiffusion):  # continuous sigma, not integer t
            self.timesteps = LogNormalSigmas(self.diffusion)
        else:
            self.timesteps = get_timestep_sampler(
                self.task.timestep_sampler, self.diffusion.num_timesteps
            )
        self._setup_model()
        self._setup_optimizer()
        self.skipped_steps = self.bad_in_a_row = 0  # non-finite steps: all, and the latest run
        self.start_step = self._resume()
        self.loader = self._setup_data()  # may still refuse the batch layout: before any write
        # The main process alone writes the run directory (opening the file trims it on
        # resume), and nothing at all when the run is already past max_steps.
        training = self.start_step < self.tc.max_steps
        writes = self.is_main and training
        if training:
            self._write_config()
            if self.is_main and self.power_ema:  # snapshots past the checkpoint are redone
                discard_snapshots_after(self.run_dir, self.start_step)
        self.metrics = (
            MetricsFile(self.run_dir / "metrics.jsonl", self.start_step) if writes else None
        )
        resuming = self.start_step > 0
        self.logger = make_logger(cfg, self.run_dir, resuming) if writes else None

    @property
    def previews(self) -> bool:
        """Preview grids during training; trainer.sample_num=0 turns them off (a smoke run of a
        large network on a CPU would otherwise spend minutes sampling its last step)."""
        return self.task.has_preview and self.tc.sample_num > 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _setup_accelerator(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        # The state is one per process and keeps the first job's mixed precision; a sweep's
        # jobs share the process (under a launcher), so each job sets it anew.
        AcceleratorState._reset_state(reset_partial_state=False)
        # Without a GPU, a plain Accelerator under a multi-process launcher silently runs every
        # process alone; cpu=True makes it join the gloo process group instead.
        acc = Accelerator(
            mixed_precision=self.tc.mixed_precision,
            gradient_accumulation_steps=self.tc.grad_accum,
            cpu=not torch.cuda.is_available(),
        )
        check_joined(acc.num_processes)
        return acc

    def _lock_run_dir(self) -> RunLock | None:
        """The main process locks the run directory (run_lock.py); every process hears if
        another training holds it."""
        lock, refusal = None, None
        if self.is_main:
            try:
                lock = RunLock(self.run_dir)
                refusal = lock.refusal
            except OSError as err:  # a read-only folder, a .lock that is a folder, ...
                refusal = f"cannot lock the run directory: {err}"
        refusal = broadcast_from_main(refusal)  # the others must not go on without the main
        if refusal:
            raise UserError(refusal)
        return lock

    def _setup_model(self) -> None:
        torch.manual_seed(self.cfg.seed)
        model = self.task.build_model()
        if self.power_ema:
            self.ema = PowerEMA(model, list(self.tc.ema_std))
        else:
            self.ema = EMA(model, self.tc.ema_decay)
        self.ema.to(self.accelerator.device)
        self.model = model

    @property
    def power_ema(self) -> bool:
        """trainer.ema=power: EDM2's power-function EMAs, with snapshots for post-hoc EMA."""
        return self.tc.ema == "power"

    def _setup_optimizer(self) -> None:
        acc = self.accelerator
        opt = build_optimizer(
            self.model.parameters(), self.tc, acc.device, loss_scaling=acc.scaler is not None
        )
        model = torch.compile(self.model) if self.tc.compile else self.model
        self.model, self.optimizer = self.accelerator.prepare(model, opt)

    @property
    def network(self) -> torch.nn.Module:
        """The network without Accelerate's or torch.compile's wrappers: its state-dict keys are
        the checkpoint's, whatever the training setup."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _setup_data(self) -> DataLoader:
        acc = self.accelerator
        try:
            sampler = StepBatchSampler(
                len(self.dataset),
                self.tc.batch_size,
                self.cfg.data.seed,
                self.start_step,
                rank=acc.process_index,
                world_size=acc.num_processes,
                grad_accum=self.tc.grad_accum,
            )
        except ValueError as err:
            raise UserError(str(err)) from err
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=self.cfg.data.num_workers,
            pin_memory=acc.device.type == "cuda",
            persistent_workers=self.cfg.data.num_workers > 0,  # no restart between epochs
        )

    def _resume(self) -> int:
        folder = latest_checkpoint(self.run_dir)
        if folder is None:
            return 0
        ckpt = read_checkpoint(folder)
        load_state_checked(self.network, ckpt["model"], f"checkpoint '{folder}'")
        if self.power_ema:
            if not ckpt["ema_profiles"]:
                raise UserError(
                    f"checkpoint '{folder}' has no power-EMA profiles (ema_profiles.safetensors) "
                    "for trainer.ema=power; resume it with the EMA it was trained with"
                )
            self.ema.load_state_dict(ckpt["ema_profiles"])
        else:
            self.ema.load_state_dict(ckpt["ema"])
        load_optimizer_state(self.optimizer, ckpt["optimizer"])
        if self.timesteps.needs_losses and not ckpt["timesteps"]:
            raise UserError(
                f"checkpoint '{folder}' has no timestep-sampler history (timesteps.safetensors) "
                f"for loss.timesteps={self.task.timestep_sampler}; it cannot be resumed exactly"
            )
        self.timesteps.load_state_dict(ckpt["timesteps"])
        scaler = ckpt["state"].get("scaler")
        if scaler and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(scaler)
        step = int(ckpt["state"]["step"])
        self.skipped_steps = int(ckpt["state"].get("skipped_steps", 0))
        self.bad_in_a_row = int(ckpt["state"].get("bad_in_a_row", 0))
        if self.is_main:
            print(f"resuming {self.run_dir} from step {step}")
        return step

    def _write_config(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            resolved = OmegaConf.to_container(self.cfg, resolve=True)
            resolved["run_dir"] = str(self.run_dir)
            if self.task.name == "classifier":
                resolved["classifier"]["num_classes"] = self.task.num_classes
            # replaced whole, never half-written: a run without a readable config.yaml
            # could not be resumed, sampled or evaluated
            write_atomically(self.run_dir / CONFIG_FILE, OmegaConf.to_yaml(resolved))
            write_atomically(self.run_dir / "overrides.yaml", OmegaConf.to_yaml(hydra_overrides()))
        self.accelerator.wait_for_everyone()

    def train_step(self, step: int, batches) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One optimizer step over grad_accum micro-batches; returns (loss, grad norm, skipped).

        A step whose gradient norm is not finite is skipped: no update, no EMA update (with fp16
        the loss scaler makes the same decision and lowers its scale). The norm is that of the
        gradients after they are synchronized, so every process decides alike.
        """
        acc, rank = self.accelerator, self.accelerator.process_index
        lr = learning_rate(self.tc, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=acc.device)
        grad_norm = torch.zeros((), device=acc.device)
        skipped = False
        # every micro-batch is read first, so an unreadable file stops the step before it
        # changes anything (the checkpoint saved then resumes exactly)
        data = [next(batches) for _ in range(self.tc.grad_accum)]
        history = []  # (t, L_t) for the importance sampler, kept only if the step is
        for micro, (x, y) in enumerate(data):
            x = x.to(acc.device, non_blocking=True)
            y = y.to(acc.device, non_blocking=True)
            seed = step_seed(self.cfg.seed, step, micro, rank)
            torch.manual_seed(seed)  # timesteps, noise and dropout of this micro-batch
            if self.cfg.data.hflip and x.dim() == 4:
                x = random_hflip(x, torch.Generator(x.device).manual_seed(seed))
            with acc.accumulate(self.model):
                t, weights = self.timesteps.sample(x.shape[0], acc.device)
                losses = self.task.losses(self.model, x, y, t)
                loss = (losses["loss"] * weights).mean()
                acc.backward(loss)
                if acc.sync_gradients:
                    clip = self.tc.grad_clip if self.tc.grad_clip > 0 else float("inf")
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip)
                    skipped = acc.scaler is None and not bool(torch.isfinite(grad_norm))
                if not skipped:
                    self.optimizer.step()
                if acc.sync_gradients and acc.scaler is not None:
                    skipped = acc.optimizer_step_was_skipped
                self.optimizer.zero_grad(set_to_none=True)
            if self.timesteps.needs_losses:  # the same history on every process
                history.append((acc.gather(t), acc.gather(losses["vlb"].detach())))
            if "correct" in losses:
                self.task.observe(acc.gather(t), {"correct": acc.gather(losses["correct"])})
            total += loss.detach() / self.tc.grad_accum
        # A power EMA's profile is over steps: a skipped step's weights are the last step's,
        # and averaging them in keeps the profile exact.
        if not skipped or self.power_ema:
            self.ema.update(self.network, step + 1)
        if not skipped:  # a skipped step's non-finite terms would poison the history
            for pair in history:
                self.timesteps.update(*pair)
        return total, grad_norm, skipped

    def fit(self) -> Path:
        """Train to trainer.max_steps; the run's lock is released however this ends."""
        try:
            return self._fit()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _fit(self) -> Path:
        acc, tc = self.accelerator, self.tc
        batches = iter(self.loader)
        bar = tqdm(
            total=tc.max_steps,
            initial=self.start_step,
            unit="step",
            dynamic_ncols=True,
            disable=not (self.is_main and tc.progress),
            desc=f"train {self.cfg.name}",
        )
        loss_sum = torch.zeros((), device=acc.device)
        seen, window, tick, step = 0, 0, time.perf_counter(), self.start_step
        paused = 0.0  # seconds of the window spent saving and previewing, not training
        saved = self.start_step
        stop = StopSignals()
        try:
            while step < tc.max_steps:
                try:
                    loss, grad_norm, skipped = self.train_step(step, batches)
                except DataError as err:
                    raise self._unreadable_data(err, step, saved) from err
                step += 1
                window += 1
                bar.update(1)
                if skipped:
                    self.skipped_steps += 1
                    self.bad_in_a_row += 1
                    if self.bad_in_a_row >= tc.max_bad_steps:
                        raise self._diverged(step, loss)
                else:
                    self.bad_in_a_row = 0
                    loss_sum += loss
                    seen += 1
                if step % tc.log_every == 0 or step == tc.max_steps:
                    mean_loss = acc.reduce(loss_sum / max(seen, 1), "mean").item()
                    mean_loss = mean_loss if seen else None  # every step of the window skipped
                    rate = window * tc.batch_size / (time.perf_counter() - tick - paused)
                    self._log(step, mean_loss, float(grad_norm), rate)
                    shown = f"{mean_loss:.4f}" if seen else "skipped"
                    bar.set_postfix(loss=shown, img_s=f"{rate:.0f}")
                    loss_sum.zero_()
                    seen, window, tick, paused = 0, 0, time.perf_counter(), 0.0
                before_io = time.perf_counter()
                if self.power_ema and (step % tc.ema_snapshot_every == 0 or step == tc.max_steps):
                    self.snapshot(step)  # before the checkpoint: a checkpoint has its snapshot
                if step % tc.ckpt_every == 0 or step == tc.max_steps:
                    self.save(step)
                    saved = step
                signum = stop.received(acc)  # before a preview, which can take minutes
                previewing = step % tc.sample_every == 0 or step == tc.max_steps
                if self.previews and previewing and not signum:
                    self.preview(step)
                paused += time.perf_counter() - before_io
                if signum:
                    if saved != step:
                        self.save(step)
                    stop.forward(signum)  # e.g. submitit's requeue; it may exit here
                    raise Interrupted(
                        f"stopped by {signal.Signals(signum).name} at step {step}; the checkpoint "
                        f"of step {step} is in '{self.run_dir}'; run the same command to resume",
                        128 + signum,
                    )
        finally:
            stop.restore()
            bar.close()
            if self.logger is not None:
                self.logger.finish()
        acc.wait_for_everyone()  # the CLI leaves the process group after the last job
        if self.is_main:
            if self.start_step >= tc.max_steps:
                print(
                    f"{self.run_dir} is already at step {self.start_step} >= trainer.max_steps="
                    f"{tc.max_steps}; nothing to train (raise trainer.max_steps to go on)"
                )
            else:
                print(f"trained {self.run_dir} to step {step}; {latest_checkpoint(self.run_dir)}")
        return self.run_dir

    def _unreadable_data(self, err: DataError, step: int, saved: int) -> UserError:
        """A file that cannot be read mid-run: save the steps done so far (one process alone
        can: the others wait in their next gradient exchange), then say how to go on."""
        if step > saved and self.accelerator.num_processes == 1:
            self.save(step)
        last = latest_checkpoint(self.run_dir)
        where = f"the latest checkpoint is '{last}'" if last else "no checkpoint was written yet"
        # a DataLoader worker's error arrives wrapped, its own message on the last line
        reason = str(err).strip().splitlines()[-1].split("DataError: ", 1)[-1]
        return UserError(
            f"{reason}; training stopped after step {step} and {where}; replace or remove "
            "the file and run the same command to resume"
        )

    def _diverged(self, step: int, loss: torch.Tensor) -> UserError:
        last = latest_checkpoint(self.run_dir)
        where = f"the last checkpoint is '{last}'" if last else "no checkpoint was written yet"
        return UserError(
            f"the loss or its gradients were not finite for {self.tc.max_bad_steps} steps in a "
            f"row (last: step {step}, loss {loss.item():.4g}); lower trainer.lr, raise "
            f"trainer.warmup_steps or use trainer.mixed_precision=no; {where}"
        )

    def _log(self, step: int, loss: float | None, grad_norm: float, img_per_s: float) -> None:
        if not self.is_main:
            return
        row = {
            "step": step,
            "loss": loss,
            "lr": learning_rate(self.tc, step - 1),
            "grad_norm": grad_norm,
            "img_per_s": img_per_s,
            "world_size": self.accelerator.num_processes,
            "skipped_steps": self.skipped_steps,
            **self.task.summary(),
        }
        self.metrics.log(row)
        self.logger.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step)

    def save(self, step: int) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        model = self.network
        for name, weights in (("weights", model), ("EMA weights", self.ema.model)):
            if not all(bool(torch.isfinite(p).all()) for p in weights.parameters()):
                last = latest_checkpoint(self.run_dir)
                raise UserError(
                    f"the {name} are not finite at step {step}; no checkpoint was written "
                    f"(the latest is still '{last}'); lower trainer.lr and resume"
                )
        # every process's weights, fingerprinted: one entry per process, all equal unless the
        # processes have drifted apart (the check the multi-process tests read)
        digests = (
            gather_object([weights_digest(model.state_dict())]) if acc.num_processes > 1 else None
        )
        if digests and len(set(digests)) > 1 and self.is_main:
            print(f"warning: the processes' weights differ at step {step}", file=sys.stderr)
        if self.is_main:
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            state = {
                "scaler": scaler,
                "world_size": acc.num_processes,
                "skipped_steps": self.skipped_steps,
                "bad_in_a_row": self.bad_in_a_row,
            }
            if digests:
                state["weights_sha256_per_process"] = digests
            save_checkpoint(
                self.run_dir,
                step,
                model.state_dict(),
                self.ema.model.state_dict(),
                self.optimizer.state_dict(),
                state,
                keep_last=self.tc.keep_last,
                timestep_state=self.timesteps.state_dict(),
                ema_profiles=self.ema.state_dict() if self.power_ema else None,
            )
        acc.wait_for_everyone()

    def snapshot(self, step: int) -> None:
        """Each power EMA's weights at `step`, into <run_dir>/ema_snapshots (main process)."""
        if self.is_main:
            write_snapshot(self.run_dir, step, self.ema.profiles())

    def preview(self, step: int) -> None:
        if self.is_main:
            path = save_training_preview(
                self.cfg,
                self.ema.model,
                self.diffusion,
                data_shape(self.cfg),
                self.run_dir,
                step,
                self.accelerator.device,
                self.dataset,
            )
            self.logger.log_image("samples", path, step=step)
