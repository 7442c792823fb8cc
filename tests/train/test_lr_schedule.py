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


def test_extending_a_decaying_run_past_its_horizon_is_refused_with_both_ways_on(compose, tmp_path):
    """Trained to 4 steps with the horizon at max_steps, the rate reached about 0; resumed with
    max_steps=8 it would jump back to half. Restarting the decay is allowed when asked for."""
    run = tmp_path / "run"
    common = [*TINY, "trainer.warmup_steps=0", "trainer.lr_decay=linear", f"run_dir={run}"]
    train(compose([*common, "trainer.max_steps=4"]))
    with pytest.raises(UserError, match=r"to 0 at step 4; .* would end the decay at step 8") as err:
        train(compose([*common, "trainer.max_steps=8"]))
    assert "pass trainer.lr_decay_steps=8" in str(err.value)
    train(compose([*common, "trainer.max_steps=3"]))  # nothing to train: no refusal
    train(compose([*common, "trainer.max_steps=8", "trainer.lr_decay_steps=8"]))  # on purpose


def test_a_pinned_horizon_is_kept_by_a_resume_that_forgets_it(compose, tmp_path):
    run = tmp_path / "run"
    common = [*TINY, "trainer.lr_decay=cosine", f"run_dir={run}"]
    train(compose([*common, "trainer.max_steps=2", "trainer.lr_decay_steps=6"]))
    with pytest.raises(UserError, match="resume with trainer.lr_decay_steps=6 to keep it"):
        train(compose([*common, "trainer.max_steps=4"]))
    train(compose([*common, "trainer.max_steps=4", "trainer.lr_decay_steps=6"]))  # smooth


def test_a_horizon_that_is_not_positive_is_refused(compose):
    with pytest.raises(UserError, match=r"trainer.lr_decay_steps=-3 must be > 0"):
        validate_train_config(compose(["trainer.lr_decay_steps=-3"]))
