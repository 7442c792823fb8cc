"""The learning-rate schedule: warmup, then constant or a decay to 0 (trainer.lr_decay)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY
from omegaconf import OmegaConf

from diffuse_cli.errors import UserError
from diffuse_cli.train.checkpoint import latest_checkpoint
from diffuse_cli.train.optimizer import learning_rate
from diffuse_cli.train.trainer import train
from diffuse_cli.train.validate import validate_train_config


def trainer_config(decay: str, horizon: int | None = None):
    return OmegaConf.create(
        {"lr": 1.0, "warmup_steps": 2, "max_steps": 10, "lr_decay": decay,
         "lr_decay_steps": horizon}
    )  # fmt: skip


def test_warmup_then_constant():
    lrs = [learning_rate(trainer_config("constant"), s) for s in range(10)]
    assert lrs == [0.5] + [1.0] * 9


def test_linear_decay_reaches_zero_at_max_steps():
    """After a 2-step warmup, 8 steps from 1 down by 1/8 each (improved-diffusion's anneal)."""
    lrs = [learning_rate(trainer_config("linear"), s) for s in range(11)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2:] == pytest.approx([1 - k / 8 for k in range(9)], abs=1e-12)
    assert lrs[10] == 0.0  # a step past the horizon would not train


def test_cosine_decay_follows_the_half_cosine():
    tc = trainer_config("cosine")
    lrs = [learning_rate(tc, s) for s in range(2, 11)]
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)])
    assert learning_rate(tc, 6) == pytest.approx(0.5)  # half way: half the rate


def test_lr_decay_steps_sets_the_horizon():
    """Pinned, a run extended past its first max_steps keeps its schedule."""
    assert learning_rate(trainer_config("linear", horizon=18), 10) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.lr_decay=step"], "trainer.lr_decay='step' is not one of: constant, linear"),
        (["trainer.lr_decay=linear", "trainer.max_steps=10", "trainer.lr_decay_steps=5"],
         "lr_decay_steps=5 is below trainer.max_steps=10"),
        (["trainer.lr_decay=cosine", "trainer.max_steps=10", "trainer.warmup_steps=10"],
         "ends at step 10, within trainer.warmup_steps=10"),
    ],
)  # fmt: skip
def test_a_decay_that_cannot_work_is_refused(compose, overrides, message):
    with pytest.raises(UserError, match=message):
        validate_train_config(compose(overrides))


def test_a_decaying_run_trains_and_logs_with_the_schedule(compose, tmp_path):
    run = tmp_path / "run"
    cfg = compose(
        [*TINY, "trainer.max_steps=4", "trainer.warmup_steps=0", "trainer.lr=1e-3",
         "trainer.lr_decay=linear", "trainer.log_every=1", f"run_dir={run}"]
    )  # fmt: skip
    train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    saved = torch.load(latest_checkpoint(run) / "optimizer.pt", weights_only=True)
    assert saved["param_groups"][0]["lr"] == pytest.approx(2.5e-4)  # the last step's rate
