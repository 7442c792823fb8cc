"""Two CPU processes under `accelerate launch`: importance-sampled training keeps one history on
every process, `eval metrics=[nll]` shards the images and gathers the same numbers as one
process does (each image's noise is seeded by its index), and `eval metrics=[fid,pr]` samples
disjoint seeds on each process and gathers exactly num_samples features."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY, TINY32, run_cli
from safetensors.torch import load_file

from diffuse_cli.train.checkpoint import latest_checkpoint


def launch(*args: str, cwd) -> subprocess.CompletedProcess:
    """`accelerate launch` two CPU processes of `diffuse <args>`."""
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
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_with_importance_and_shard_the_nll(tmp_path):
    common = [
        *TINY,
        "loss=hybrid",
        "loss.timesteps=importance",
        "variance=learned_range",
        "schedule.num_timesteps=16",
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
    launch(*args, cwd=tmp_path)  # 7 samples: shards of 3 and 4, no padding
    two = json.loads(report.read_text())
    run_cli(*args, cwd=tmp_path)
    one = json.loads(report.read_text())
    assert (two["num_processes"], one["num_processes"]) == (2, 1)
    assert two["num_samples"] == one["num_samples"] == 7
    assert two["metrics"]["fd_builtin"] == pytest.approx(one["metrics"]["fd_builtin"], rel=1e-5)
    assert two["metrics"]["precision"] == one["metrics"]["precision"]
    assert two["metrics"]["recall"] == one["metrics"]["recall"]
