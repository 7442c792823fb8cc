"""Nothing a crash, a signal, a non-finite loss or a full disk does may lose more than the steps
since the last checkpoint, or leave a checkpoint that cannot be resumed."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, checksums, run_cli, run_cli_in_process
from safetensors import SafetensorError
from safetensors.torch import load_file

from diffuse_cli.data import DataError
from diffuse_cli.errors import UserError
from diffuse_cli.train import checkpoint as ckpt
from diffuse_cli.train.checkpoint import latest_checkpoint, save_checkpoint
from diffuse_cli.train.trainer import Trainer

QUIET = [*TINY, "trainer.sample_every=1000"]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def nan_on(trainer: Trainer, calls: set[int]):
    """Make the task's loss NaN on the given (0-based) calls, i.e. training steps."""
    losses, count = trainer.task.losses, [0]

    def patched(*args, **kwargs):
        out = losses(*args, **kwargs)
        if count[0] in calls:
            out = {**out, "loss": out["loss"] * float("nan")}
        count[0] += 1
        return out

    trainer.task.losses = patched


@pytest.mark.cuda
def test_non_finite_steps_are_skipped_and_counted(compose, tmp_path):
    trainer = Trainer(compose([*QUIET, "trainer.max_steps=6", f"run_dir={tmp_path}"]))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    nan_on(trainer, {0, 1, 3})
    trainer.fit()
    last = rows(tmp_path)[-1]
    assert last["skipped_steps"] == 3 and last["step"] == 6
    weights = load_file(latest_checkpoint(tmp_path) / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert any(not torch.equal(weights[k], before[k]) for k in weights)  # 3 good steps moved them


def test_a_skipped_step_leaves_the_importance_samplers_history_finite(compose, tmp_path):
    """Its non-finite L_t used to enter the history; once every t had 10 terms the sampling
    probabilities were NaN and the run stopped with a raw RuntimeError."""
    cfg = compose([*QUIET, "variance=learned_range", "loss=hybrid", "loss.timesteps=importance",
                   "schedule=cosine", "schedule.num_timesteps=10", "trainer.max_steps=25",
                   f"run_dir={tmp_path}"])  # fmt: skip
    trainer = Trainer(cfg)
    losses, count = trainer.task.losses, [0]

    def poisoned(*args, **kwargs):  # step 3: every term non-finite, the VLB ones too
        out = losses(*args, **kwargs)
        count[0] += 1
        return {k: v * float("nan") for k, v in out.items()} if count[0] == 3 else out

    trainer.task.losses = poisoned
    trainer.fit()  # 24 good steps of 8 examples fill the history of all 10 timesteps
    assert rows(tmp_path)[-1]["skipped_steps"] == 1
    assert torch.isfinite(trainer.timesteps.loss_history).all()
    assert bool((trainer.timesteps.loss_counts == 10).all())


def test_a_run_of_non_finite_steps_stops_and_keeps_the_last_checkpoint(compose, tmp_path):
    cfg = compose([*QUIET, "trainer.max_steps=8", "trainer.max_bad_steps=3", f"run_dir={tmp_path}"])
    trainer = Trainer(cfg)
    nan_on(trainer, set(range(2, 100)))
    with pytest.raises(UserError, match="not finite for 3 steps in a row") as err:
        trainer.fit()
    # steps 3 and 4 were skipped, so step 4's checkpoint holds step 2's weights (all finite);
    # step 5 is the third bad step in a row and stops the run before anything else is written
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    assert "last: step 5" in str(err.value) and "step_00000004'" in str(err.value)


def test_a_checkpoint_with_non_finite_weights_is_never_written(compose, tmp_path):
    trainer = Trainer(compose([*QUIET, "trainer.max_steps=2", f"run_dir={tmp_path}"]))
    trainer.fit()
    before = checksums(tmp_path / "checkpoints")
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    with pytest.raises(UserError, match="weights are not finite at step 3; no checkpoint"):
        trainer.save(3)
    assert checksums(tmp_path / "checkpoints") == before


ENOSPC = f"{os.strerror(errno.ENOSPC)} (os error {errno.ENOSPC})"


@pytest.mark.parametrize(
    "target, error",
    [  # what each writer raises on a full disk: only the first is an OSError
        ("save_file", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
        ("save_file", SafetensorError(f"Error while serializing: IoError({ENOSPC})")),
        ("torch.save", RuntimeError(f"[enforce fail at inline_container.cc:672] {ENOSPC}")),
    ],
    ids=["oserror", "safetensors", "torch.save"],
)
def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, target, error):
    state = {"w": torch.ones(3)}
    save_checkpoint(tmp_path, 1, state, state, {"state": {}, "param_groups": []}, {})
    before = checksums(tmp_path)
    real = ckpt.save_file if target == "save_file" else torch.save
    calls = []

    def full(obj, path, *args, **kwargs):
        calls.append(path)
        if target == "torch.save" or len(calls) == 2:  # the EMA or optimizer file
            raise error
        return real(obj, path, *args, **kwargs)

    if target == "save_file":
        monkeypatch.setattr(ckpt, "save_file", full)
    else:
        monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(UserError) as err:
        save_checkpoint(tmp_path, 2, state, state, {"state": {}, "param_groups": []}, {})
    message = str(err.value)
    assert "could not write checkpoint step_00000002" in message
    assert "No space left on device" in message and "step_00000001' is intact" in message
    assert checksums(tmp_path) == before  # no temporary folder left behind either
    assert latest_checkpoint(tmp_path).name == "step_00000001"


@pytest.mark.cli
@pytest.mark.parametrize(
    "signum",  # one path for all three: SIGTERM in the default suite, the others with -m slow
    [signal.SIGTERM, *(pytest.param(s, marks=pytest.mark.slow) for s in (signal.SIGINT,
                                                                        signal.SIGUSR1))],
)  # fmt: skip
def test_a_signal_saves_a_checkpoint_and_exits_with_how_to_resume(tmp_path, signum):
    args = [*QUIET, "trainer.max_steps=100000", "trainer.log_every=1", "trainer.ckpt_every=1000"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffuse_cli", "train", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = tmp_path / "runs" / "default" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.read_text().strip()) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name} at step" in stderr
    assert "run the same command to resume" in stderr and "Traceback" not in stderr
    step = int(stderr.split(" at step ")[1].split(";")[0])
    assert latest_checkpoint(tmp_path / "runs" / "default").name == f"step_{step:08d}"
    resumed = run_cli("train", *QUIET, f"trainer.max_steps={step + 1}", cwd=tmp_path)
    assert f"from step {step}" in resumed.stdout


# --- SIGKILL at chosen moments, then resume: the final weights equal an uninterrupted run's ---

KILL_POINTS = {
    # inside the save of step 4: after its model file, before its EMA file
    "inside_save": "ckpt.save_file = kill_on_call(ckpt.save_file, 4)",
    # after step 4's folder is in place, before `latest` moves to it (os.replace also
    # replaces config.yaml and overrides.yaml: only the pointer's moves are counted)
    "before_pointer": "ckpt.os.replace = kill_on_call(ckpt.os.replace, 2, "
    "lambda src, dst: os.path.basename(dst) == 'latest')",
    # in the middle of training, three steps after the last checkpoint
    "mid_training": "Trainer.train_step = kill_on_call(Trainer.train_step, 5)",
}

KILLER = """
import os, signal, sys
from diffuse_cli.train import checkpoint as ckpt
from diffuse_cli.train.trainer import Trainer

def kill_on_call(fn, n, counts=lambda *args: True):
    count = [0]
    def wrapped(*args, **kwargs):
        count[0] += bool(counts(*args))
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped

{patch}
from diffuse_cli.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, point):
    common = [*QUIET, "trainer.max_steps=8", "trainer.ckpt_every=2", "model.dropout=0.1"]
    run_cli("train", *common, "name=straight", cwd=tmp_path)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER.format(patch=KILL_POINTS[point]), "train", *common],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "runs" / "default"
    assert latest_checkpoint(run).name in ("step_00000002", "step_00000004")
    run_cli("train", *common, cwd=tmp_path)
    assert not list((run / "checkpoints").glob(".tmp-*"))  # a half-written save is cleaned up
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(latest_checkpoint(tmp_path / "runs" / "straight") / name)
        b = load_file(latest_checkpoint(run) / name)
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_a_signal_reaches_the_previous_handler_after_the_checkpoint(compose, tmp_path):
    """Slurm through submitit: its handler of the pre-emption signal requeues the job, so it must
    run after the checkpoint is written, and the requeued job resumes from that step."""
    seen = []

    def requeue(signum, frame):  # stands in for submitit's handler
        seen.append((signum, latest_checkpoint(tmp_path).name))

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        trainer = Trainer(compose([*QUIET, "trainer.max_steps=50", f"run_dir={tmp_path}"]))
        step = trainer.train_step

        def step_then_signal(n, batches):
            out = step(n, batches)
            if n == 2:  # during the third step
                os.kill(os.getpid(), signal.SIGUSR2)
            return out

        trainer.train_step = step_then_signal
        with pytest.raises(UserError) as stopped:
            trainer.fit()
        assert signal.getsignal(signal.SIGUSR2) is requeue  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.value.exit_code == 128 + signal.SIGUSR2
    assert seen == [(signal.SIGUSR2, "step_00000003")]
    assert Trainer(compose([*QUIET, "trainer.max_steps=50", f"run_dir={tmp_path}"])).start_step == 3


class FailingLoader:
    """The trainer's loader, with the `fail_at`-th batch (0-based) an unreadable file, raised
    as a DataLoader worker re-raises it: wrapped, the dataset's message on the last line."""

    def __init__(self, loader, fail_at: int):
        self.loader, self.fail_at = loader, fail_at

    def __iter__(self):
        from diffuse_cli.data import DataError

        for i, batch in enumerate(self.loader):
            if i == self.fail_at:
                raise DataError(
                    "Caught DataError in DataLoader worker process 0.\nOriginal Traceback "
                    "(most recent call last):\n  ...\ndiffuse_cli.data.base.DataError: cannot "
                    "read image cats/7.png: image file is truncated"
                )
            yield batch


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_an_unreadable_file_mid_run_saves_the_steps_done(compose, tmp_path, grad_accum):
    """The 6th micro-batch is unreadable: steps 1-5 (grad_accum 1) or 1-2 (grad_accum 2, the
    bad file is step 3's second half) are saved, and nothing of the failed step is in them:
    not in the weights, and not in the importance sampler's loss history, which each
    micro-batch updates."""
    overrides = [*QUIET, "trainer.max_steps=8", "trainer.ckpt_every=100", "loss=hybrid",
                 "variance=learned_range", "loss.timesteps=importance"]  # fmt: skip
    cfg = compose([*overrides, f"trainer.grad_accum={grad_accum}", f"run_dir={tmp_path}"])
    trainer = Trainer(cfg)
    trainer.loader = FailingLoader(trainer.loader, fail_at=5)
    with pytest.raises(UserError) as err:
        trainer.fit()
    done = 5 // grad_accum
    name = f"step_{done:08d}"
    assert str(err.value).startswith(
        f"cannot read image cats/7.png: image file is truncated; training stopped after step "
        f"{done} and the latest checkpoint is '{tmp_path / 'checkpoints' / name}'"
    )
    assert latest_checkpoint(tmp_path).name == name
    reference = tmp_path / "reference"
    Trainer(compose([*overrides, f"trainer.grad_accum={grad_accum}", f"trainer.max_steps={done}",
                     f"run_dir={reference}"])).fit()  # fmt: skip
    for name in ("model.safetensors", "timesteps.safetensors"):
        saved = load_file(latest_checkpoint(tmp_path) / name)
        uninterrupted = load_file(latest_checkpoint(reference) / name)
        assert saved.keys() == uninterrupted.keys()
        assert all(torch.equal(saved[k], uninterrupted[k]) for k in saved), name


def test_a_refused_wandb_login_leaves_an_existing_run_untouched(compose, tmp_path, monkeypatch):
    from diffuse_cli.train import loggers

    Trainer(compose([*QUIET, "trainer.max_steps=2", f"run_dir={tmp_path}"])).fit()
    before = checksums(tmp_path)
    monkeypatch.setattr(loggers, "wandb_logged_in", lambda: False)
    cfg = compose([*QUIET, "trainer.max_steps=4", "logger=wandb", f"run_dir={tmp_path}"])
    with pytest.raises(UserError, match="wandb is not logged in"):
        Trainer(cfg)
    assert checksums(tmp_path) == before


def test_a_fresh_run_in_a_reused_folder_gets_a_new_wandb_run(tmp_path):
    from diffuse_cli.train.loggers import wandb_run_id

    first = wandb_run_id(tmp_path, resuming=False)
    assert wandb_run_id(tmp_path, resuming=True) == first  # a resume continues it
    assert wandb_run_id(tmp_path, resuming=False) != first  # training afresh does not


def test_skipped_step_counts_carry_over_a_resume(compose, tmp_path):
    """3 non-finite steps, a resume, then one more: the metrics count 4 skipped steps and the
    4th bad step in a row stops the run (trainer.max_bad_steps=4), as without the resume."""
    cfg = [*QUIET, "trainer.log_every=1", "trainer.ckpt_every=1", "trainer.max_bad_steps=4"]
    first = Trainer(compose([*cfg, "trainer.max_steps=3", f"run_dir={tmp_path}"]))
    nan_on(first, set(range(100)))
    first.fit()
    assert [r["skipped_steps"] for r in rows(tmp_path)] == [1, 2, 3]
    again = Trainer(compose([*cfg, "trainer.max_steps=6", f"run_dir={tmp_path}"]))
    nan_on(again, set(range(100)))
    with pytest.raises(UserError, match="not finite for 4 steps in a row"):
        again.fit()
    assert again.skipped_steps == 4


def test_a_window_of_skipped_steps_logs_null_in_strict_json(compose, tmp_path):
    """NaN is not JSON: a skipped step's gradient norm, and the loss of a window in which every
    step was skipped, are written as null."""
    trainer = Trainer(compose([*QUIET, "trainer.max_steps=4", "trainer.log_every=1",
                               f"run_dir={tmp_path}"]))  # fmt: skip
    nan_on(trainer, {1, 2})
    trainer.fit()

    def refuse(constant):
        raise ValueError(f"{constant} in metrics.jsonl")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line, parse_constant=refuse) for line in lines]
    assert [(r["loss"] is None, r["grad_norm"] is None) for r in logged] == [
        (False, False), (True, True), (True, True), (False, False)
    ]  # fmt: skip


def test_a_config_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    from diffuse_cli import files

    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError):
        files.write_atomically(path, "new: 2\n")
    assert path.read_text() == "old: 1\n" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_stop_signal_skips_the_preview_of_its_step(compose, tmp_path):
    """A preview can take minutes, longer than Slurm's warning before the kill: a step that
    received a stop signal saves and stops without sampling its grid."""
    cfg = compose([*QUIET, "trainer.max_steps=8", "trainer.sample_every=2", f"run_dir={tmp_path}"])
    trainer = Trainer(cfg)
    previews, step_of = [], trainer.train_step

    def step_then_signal(step, batches):
        out = step_of(step, batches)
        if step + 1 == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    trainer.train_step = step_then_signal
    trainer.preview = previews.append
    with pytest.raises(UserError, match="stopped by SIGTERM at step 4"):
        trainer.fit()
    assert previews == [2] and latest_checkpoint(tmp_path).name == "step_00000004"


def test_img_per_s_leaves_out_the_time_spent_saving(compose, tmp_path, monkeypatch):
    """A fake clock: each training step takes 1 s, each checkpoint 100 s. The window after a
    log step used to be charged for that step's checkpoint (and preview)."""
    from types import SimpleNamespace

    import diffuse_cli.train.trainer as trainer_module

    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    cfg = compose([*QUIET, "trainer.max_steps=6", "trainer.log_every=2", "trainer.ckpt_every=2",
                   f"run_dir={tmp_path}"])  # fmt: skip
    trainer = Trainer(cfg)
    step, save = trainer.train_step, trainer.save

    def one_second_step(*args, **kwargs):
        clock[0] += 1.0
        return step(*args, **kwargs)

    def slow_save(*args, **kwargs):
        clock[0] += 100.0
        return save(*args, **kwargs)

    trainer.train_step, trainer.save = one_second_step, slow_save
    trainer.fit()
    batch = cfg.trainer.batch_size  # 2 steps of `batch` images in 2 s, every window
    assert [r["img_per_s"] for r in rows(tmp_path)] == [batch, batch, batch]


# --- one writer per run ---------------------------------------------------------------------


def test_a_second_training_of_a_run_in_progress_is_refused(compose, tmp_path):
    """Two trainings of one run interleaved checkpoints and metrics.jsonl lines, and one's save
    removed the other's; the first holds the run's lock until it ends."""
    cfg = compose([*QUIET, "trainer.max_steps=2", f"run_dir={tmp_path}"])
    first = Trainer(cfg)
    with pytest.raises(UserError, match=rf"is being trained by pid {os.getpid()} on "):
        Trainer(cfg)
    first.fit()  # ends, and unlocks
    more = Trainer(compose([*QUIET, "trainer.max_steps=3", f"run_dir={tmp_path}"]))
    assert more.start_step == 2
    more.fit()
    assert [r["step"] for r in rows(tmp_path)][-1] == 3


def test_a_refused_start_leaves_no_lock_or_folder(compose, tmp_path):
    run = tmp_path / "new" / "run"
    cfg = compose([*QUIET, "data=image_folder", f"data.root={tmp_path / 'none'}",
                   f"run_dir={run}"])  # fmt: skip
    with pytest.raises(DataError):
        Trainer(cfg)
    assert not (tmp_path / "new").exists()  # nor the parent it made


def test_a_lock_that_cannot_be_taken_is_a_refusal_every_process_hears(compose, tmp_path):
    """An OSError in the main process's locking was a traceback there, and under several
    processes the others went on into setup without it."""
    (tmp_path / ".lock").mkdir()
    with pytest.raises(UserError, match=r"cannot lock the run directory: .*Is a directory"):
        Trainer(compose([*QUIET, f"run_dir={tmp_path}"]))


def test_a_refused_start_gives_the_users_empty_folder_its_old_times(tmp_path):
    """The CLI removes an empty run folder made after the command started (Hydra's); the lock
    file's creation and removal must not make the user's own empty folder look new."""
    run = tmp_path / "runs" / "exp"
    run.mkdir(parents=True)
    os.utime(run, (time.time() - 3600, time.time() - 3600))
    args = [*QUIET, f"run_dir={run}", "data=image_folder", f"data.root={tmp_path / 'none'}"]
    proc = run_cli_in_process("train", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert run.is_dir() and list(run.iterdir()) == []


def test_a_lock_taken_on_a_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """Between opening .lock and locking it, a refused start may remove it and a third start
    create a new one: a lock on the removed file would let two trainings run."""
    from diffuse_cli.train import run_lock

    real, calls = run_lock.fcntl.flock, []

    def removed_before_the_first_lock(fh, how):
        if not calls:
            (tmp_path / ".lock").unlink()
            (tmp_path / ".lock").write_text("")  # the third start's new file
        calls.append(how)
        return real(fh, how)

    monkeypatch.setattr(run_lock.fcntl, "flock", removed_before_the_first_lock)
    lock = run_lock.RunLock(tmp_path)
    assert lock.refusal is None and len(calls) == 2
    assert os.fstat(lock.file.fileno()).st_ino == (tmp_path / ".lock").stat().st_ino
    lock.release()


def test_a_lock_whose_holder_is_not_written_yet_is_this_machines(compose, tmp_path, monkeypatch):
    from diffuse_cli.train import run_lock

    def no_waiting(seconds):
        raise AssertionError("waited for a lock of this machine")

    monkeypatch.setattr(run_lock.time, "sleep", no_waiting)
    held = hold_lock(tmp_path, "")
    with pytest.raises(UserError, match="is being trained by another process on "):
        Trainer(compose([*QUIET, f"run_dir={tmp_path}"]))
    held.close()


def test_the_lock_is_released_when_training_fails_before_its_loop(compose, tmp_path):
    trainer = Trainer(compose([*QUIET, "trainer.max_steps=2", f"run_dir={tmp_path}"]))
    trainer.loader = None  # iter(None) fails before the first step
    with pytest.raises(TypeError):
        trainer.fit()
    Trainer(compose([*QUIET, "trainer.max_steps=2", f"run_dir={tmp_path}"])).fit()


def hold_lock(run: Path, holder: str):
    """Another process's lock on `run`, as its file says (flock conflicts between two opens)."""
    import fcntl

    run.mkdir(parents=True, exist_ok=True)
    fh = open(run / ".lock", "w")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(holder + "\n")
    fh.flush()
    return fh


def test_a_lock_held_from_another_machine_is_waited_for(compose, tmp_path, monkeypatch):
    """A network file system keeps a failed node's lock until its lease ends, and Slurm may
    requeue the job elsewhere before that: wait for it, then take it."""
    import threading

    from diffuse_cli.train import run_lock

    monkeypatch.setattr(run_lock, "POLL", 0.05)
    held = hold_lock(tmp_path, "pid 1 on a-node-that-failed")
    threading.Timer(0.5, held.close).start()  # the lease runs out
    trainer = Trainer(compose([*QUIET, "trainer.max_steps=1", f"run_dir={tmp_path}"]))
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    trainer.fit()
    monkeypatch.setattr(run_lock, "OTHER_HOST_WAIT", 0.3)
    held = hold_lock(tmp_path, "pid 1 on a-node-that-trains")
    with pytest.raises(UserError, match="is being trained by pid 1 on a-node-that-trains"):
        Trainer(compose([*QUIET, "trainer.max_steps=2", f"run_dir={tmp_path}"]))
    held.close()


def _quality_report(folder: Path) -> None:
    report = {"kind": "sample_quality", "sampler": {"name": "ddim"}, "steps": 10,
              "num_samples": 8, "extractor": {"name": "builtin"},
              "metrics": {"fd_builtin": 1.0}}  # fmt: skip
    (folder / "eval" / "ddim-10").mkdir(parents=True)
    (folder / "eval" / "ddim-10" / "builtin.json").write_text(json.dumps(report))


def _write_images(kind: str, folder: Path) -> list[Path]:
    from diffuse_cli.evaluate import report
    from diffuse_cli.images import save_grid, save_scatter

    if kind == "grid":
        save_grid(torch.zeros(4, 3, 8, 8), folder / "grid.png")
        return [folder / "grid.png"]
    if kind == "scatter":
        save_scatter(torch.zeros(16, 2), folder / "grid.png")
        return [folder / "grid.png"]
    return list(report.write_report(folder))


@pytest.mark.parametrize("kind", ["grid", "scatter", "report"])
def test_a_picture_or_table_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch, kind):
    """A sweep's `diffuse report` or a preview killed mid-write left half a PNG where a
    reader (an image viewer, a web page of the run) expected the last whole one."""
    from diffuse_cli import files

    _quality_report(tmp_path)
    paths = _write_images(kind, tmp_path)
    old = {p: p.read_bytes() for p in paths}
    assert all(b.startswith(b"\x89PNG") or b.startswith(b"|") for b in old.values())

    real = os.replace

    def crash_on_pictures(src, dst):  # report.md is written first: its PNG must fail too
        if not str(dst).endswith(".png"):
            return real(src, dst)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", crash_on_pictures)
    for p in paths:
        p.write_bytes(old[p])  # a whole file from an earlier run
    with pytest.raises(OSError, match="No space"):
        _write_images(kind, tmp_path)
    assert {p: p.read_bytes() for p in paths} == old
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
