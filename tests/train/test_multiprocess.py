"""Two CPU processes under `accelerate launch` (gloo): training keeps bit-identical weights on
both processes and resumes exactly; importance-sampled training keeps one history on every
process; `sample` and `eval` shard their work and gather exactly num_samples items, the same
ones one process makes (each sample's and each image's noise is seeded by its index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, TINY32, run_cli
from safetensors.torch import load_file

from diffuse_cli.train.checkpoint import latest_checkpoint
from diffuse_cli.train.trainer import weights_digest

pytestmark = pytest.mark.cli


def launch(*args: str, cwd, check: bool = True, timeout: int = 900):
    """`accelerate launch` two CPU processes of `diffuse <args>` (CompletedProcess)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",  # without GPUs: CPU processes in one gloo group (README)
            "--num_processes=2",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            "-m",
            "diffuse_cli",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        assert "terminate called" not in proc.stderr, proc.stderr
    return proc


def checkpoint_weights(folder):
    state = json.loads((folder / "state.json").read_text())
    return load_file(folder / "model.safetensors"), load_file(folder / "ema.safetensors"), state


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "recipe", [[], ["schedule=edm", "prediction=edm", "loss.weighting=edm"]], ids=["ddpm", "edm"]
)
def test_two_processes_keep_one_set_of_weights_and_resume_exactly(tmp_path, recipe):
    common = [*TINY, *recipe, "trainer.ckpt_every=3", "trainer.sample_every=100",
              "model.dropout=0.1", "data.hflip=true", "trainer.grad_accum=2",
              "trainer.batch_size=16"]  # fmt: skip
    launch("train", *common, "trainer.max_steps=6", "name=straight", cwd=tmp_path)
    straight = tmp_path / "runs" / "straight"
    for step in (3, 6):
        weights, ema, state = checkpoint_weights(straight / "checkpoints" / f"step_{step:08d}")
        assert state["world_size"] == 2
        # both processes' weights, fingerprinted by each process itself: bit-identical, and the
        # weights that were saved
        assert state["weights_sha256_per_process"] == [weights_digest(weights)] * 2
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in lines] == [2] * len(lines) and len(lines) == 3
    assert not list(straight.rglob("*.tmp*")) and len(list(tmp_path.glob("runs/*"))) == 1

    launch("train", *common, "trainer.max_steps=3", "name=resumed", cwd=tmp_path)
    proc = launch("train", *common, "trainer.max_steps=6", "name=resumed", cwd=tmp_path)
    assert proc.stdout.count("resuming") == 1  # the main process says it once
    resumed = tmp_path / "runs" / "resumed" / "checkpoints" / "step_00000006"
    wa, ea, _ = checkpoint_weights(straight / "checkpoints" / "step_00000006")
    wb, eb, state = checkpoint_weights(resumed)
    assert state["weights_sha256_per_process"] == [weights_digest(wb)] * 2
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
        assert torch.equal(ea[k], eb[k]), k


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_share_a_sample_command(tmp_path):
    run_cli("train", *TINY, cwd=tmp_path)
    args = ["sample", "sampler=ddim", "steps=3", "num_samples=7", "batch_size=3", "progress=false"]
    out = tmp_path / "runs" / "default" / "samples" / "ddim-3" / "samples.npz"
    proc = launch(*args, cwd=tmp_path)
    assert proc.stdout.count("wrote") == 1
    two = np.load(out)["arr_0"]
    run_cli(*args, cwd=tmp_path)
    one = np.load(out)["arr_0"]
    assert two.shape == one.shape == (7, 16, 16, 3)
    assert len({a.tobytes() for a in two}) == 7  # distinct: no process drew another's seeds
    # the same samples (uint8 rounding may differ by one level across batch compositions)
    assert np.abs(two.astype(int) - one.astype(int)).max() <= 1


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_with_importance_and_shard_the_nll(tmp_path):
    common = [
        *TINY,
        "loss=hybrid",
        "loss.timesteps=importance",
        "variance=learned_range",
        "schedule.num_timesteps=16",
        "schedule.scale_betas=false",  # 1000/T would take beta_T past 1
        "trainer.max_steps=6",
        "trainer.ckpt_every=6",
    ]
    launch("train", *common, cwd=tmp_path)
    run = tmp_path / "runs" / "default"
    history = load_file(latest_checkpoint(run) / "timesteps.safetensors")
    # 6 steps x 8 examples: both processes' (t, L_t) pairs (no t reaches 10 of them)
    assert int(history["loss_counts"].sum()) == 48
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["world_size"] == 2

    nll = ["eval", "metrics=[nll]", "eval.nll_examples=5", "eval.batch_size=2", "progress=false"]
    launch(*nll, cwd=tmp_path)
    two = json.loads((run / "eval" / "nll.json").read_text())
    run_cli(*nll, cwd=tmp_path)
    one = json.loads((run / "eval" / "nll.json").read_text())
    assert (two["num_processes"], one["num_processes"]) == (2, 1)
    assert two["num_examples"] == one["num_examples"] == 5
    assert two["bpd"] == pytest.approx(one["bpd"], rel=1e-5)
    assert [r["bpd"] for r in two["terms"]] == pytest.approx([r["bpd"] for r in one["terms"]])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_share_the_samples_of_a_quality_eval(tmp_path):
    run_cli("train", *TINY32, cwd=tmp_path)
    report = tmp_path / "runs" / "default" / "eval" / "ddim-2" / "builtin.json"
    args = ["eval", "metrics=[fid,pr]", "sampler=ddim", "steps=2", "eval.num_samples=7",
            "batch_size=3", "progress=false"]  # fmt: skip
    launch(*args, "eval.cache_dir=two", cwd=tmp_path)  # 7 samples: shards of 3 and 4
    two = json.loads(report.read_text())
    run_cli(*args, "eval.cache_dir=one", cwd=tmp_path)
    one = json.loads(report.read_text())
    assert (two["num_processes"], one["num_processes"]) == (2, 1)
    # the reference features, extracted in two shards (32 test images) and by one process
    assert not two["reference"]["cached"] and not one["reference"]["cached"]
    sharded = load_file(tmp_path / two["reference"]["cache"])["features"]
    whole = load_file(tmp_path / one["reference"]["cache"])["features"]
    assert sharded.shape == (32, 128) and torch.allclose(sharded, whole, atol=1e-5)
    assert two["num_samples"] == one["num_samples"] == 7
    assert two["metrics"]["fd_builtin"] == pytest.approx(one["metrics"]["fd_builtin"], rel=1e-5)
    assert two["metrics"]["precision_builtin"] == one["metrics"]["precision_builtin"]
    assert two["metrics"]["recall_builtin"] == one["metrics"]["recall_builtin"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_sweep_under_a_launcher_keeps_its_process_group_for_every_job(tmp_path):
    # the group is left once, after the last job: job 2 used to find it destroyed by job 1
    launch("train", "-m", *TINY, "trainer.max_steps=2", "schedule=linear,cosine", cwd=tmp_path)
    configs = sorted((tmp_path / "runs" / "default").glob("*/config.yaml"))
    assert len(configs) == 2
    for config in configs:
        last = (config.parent / "metrics.jsonl").read_text().splitlines()[-1]
        assert json.loads(last)["world_size"] == 2


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_loss_eval_of_a_run_with_downloads_on_runs_on_the_main_process_alone(tmp_path):
    """The held-out loss is the main process's; with data.download=true its data set once
    waited at a barrier the other process never reached."""
    run_cli("train", *TINY, "trainer.max_steps=2", "data.download=true", cwd=tmp_path)
    launch("eval", "metrics=[loss]", "eval.num_batches=1", "progress=false", cwd=tmp_path)
    assert (tmp_path / "runs" / "default" / "eval" / "loss.json").is_file()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_sweep_job_that_fails_on_one_process_ends_every_process(tmp_path):
    """Hydra logs a failed job and starts the next; a process failing alone did that while the
    other still waited in the failed job, and both hung until gloo's 30-minute timeout."""
    run_cli("train", *TINY32, "trainer.max_steps=2", "trainer.sample_every=100", cwd=tmp_path)
    blocked = tmp_path / "runs" / "default" / "eval" / "ddim-1" / "builtin.json"
    blocked.mkdir(parents=True)  # only the main process writes the report: it fails alone
    sweep = ["eval", "-m", "metrics=[fid]", "eval.num_samples=4", "batch_size=2",
             "sampler=ddim", "steps=1,2", "progress=false"]  # fmt: skip
    proc = launch(*sweep, cwd=tmp_path, check=False, timeout=300)
    assert proc.returncode != 0
    assert "IsADirectoryError" in proc.stderr and "a process failed" in proc.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_refusals_of_the_main_process_reach_every_process_as_one_line(tmp_path):
    """The run lock and the checkpoint step are looked up by the main process alone; the
    other process must stop with the same line, not go on without it or wait forever."""
    import fcntl
    import socket

    run_cli("train", *TINY, "trainer.max_steps=2", cwd=tmp_path)
    with open(tmp_path / "runs" / "default" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another training of the run
        held.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        held.flush()
        proc = launch("train", *TINY, "trainer.max_steps=4", cwd=tmp_path, check=False,
                      timeout=300)  # fmt: skip
    # each process: the line and status 2 (the launcher adds its own summary and traceback)
    assert (
        proc.returncode != 0 and "UserError" not in proc.stderr and "exitcode  : 2 " in proc.stderr
    )
    assert proc.stderr.count(f"is being trained by pid {os.getpid()}") == 2, proc.stderr
    proc = launch("sample", "checkpoint=3", "num_samples=2", cwd=tmp_path, check=False,
                  timeout=300)  # fmt: skip
    assert (
        proc.returncode != 0 and "UserError" not in proc.stderr and "exitcode  : 2 " in proc.stderr
    )
    assert proc.stderr.count("diffuse sample: error: ") == 2, proc.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_track_power_emas_and_sample_a_reconstructed_one(tmp_path):
    from test_posthoc_ema import POWER

    launch("train", *POWER, cwd=tmp_path)
    run = tmp_path / "runs" / "toy2d"
    snapshots = sorted(p.name for p in (run / "ema_snapshots").iterdir())
    assert snapshots == [f"step_0000000{s}" for s in (2, 4, 6, 8)]  # written once, whole
    _, ema, state = checkpoint_weights(run / "checkpoints" / "step_00000008")
    assert state["world_size"] == 2
    first = load_file(run / "ema_snapshots" / "step_00000008" / "std_0.050.safetensors")
    assert all(torch.equal(ema[k], first[k]) for k in ema)
    args = [
        "sample",
        "name=toy2d",
        "ema_std=0.08",
        "sampler=ddim",
        "steps=3",
        "num_samples=7",
        "progress=false",
    ]
    proc = launch(*args, cwd=tmp_path)
    assert proc.stdout.count("wrote") == 1 and "sigma_rel 0.080" in proc.stdout
    two = np.load(run / "samples" / "ddim-3-ema0.080" / "samples.npz")["arr_0"]
    run_cli(*args, cwd=tmp_path)
    one = np.load(run / "samples" / "ddim-3-ema0.080" / "samples.npz")["arr_0"]
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
