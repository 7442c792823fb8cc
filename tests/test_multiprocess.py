"""Two CPU processes under `accelerate launch`: importance-sampled training keeps one history on
every process, and `eval metrics=[nll]` shards the images and gathers the same numbers as one
process does (each image's noise is seeded by its index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY, run_cli
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
