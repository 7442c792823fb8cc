"""Range checks by table (diffuse_cli.ranges), which train, sample and eval share: one line
naming the key, the value and what is allowed; the first key of the table that is out of range."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from diffuse_cli.errors import UserError
from diffuse_cli.ranges import (
    FRACTION,
    NOT_NEGATIVE,
    POSITIVE,
    check_ranges,
    one_of,
    positive_or_null,
)


@pytest.mark.parametrize(
    ("allowed", "good", "bad", "message"),
    [
        (POSITIVE, [1, 0.5], [0, -2, float("nan")], "x={} must be > 0"),
        (NOT_NEGATIVE, [0, 3.0], [-1, float("nan")], "x={} must be >= 0"),
        (FRACTION, [0.0, 0.99], [1.0, -0.1, float("nan")], "x={} must be in [0, 1)"),
        (positive_or_null("all"), [None, 2], [0, -1], "x={} must be > 0 (or null: all)"),
        (positive_or_null(), [None, 2], [0], "x={} must be > 0 (or null)"),
        (one_of("adam", "adamw"), ["adam"], ["sgd"], "x='{}' is not one of: adam, adamw"),
    ],
)
def test_each_range_holds_its_values_and_refuses_the_others_in_one_line(
    allowed, good, bad, message
):
    for value in good:
        check_ranges(OmegaConf.create({"x": value}), {"x": allowed})
    for value in bad:
        with pytest.raises(UserError) as refused:
            check_ranges(OmegaConf.create({"x": value}), {"x": allowed})
        assert str(refused.value) == message.format(value)


def test_the_first_key_out_of_range_in_table_order_is_named_with_its_place():
    node = OmegaConf.create({"a": 1, "b": 0, "c": -1})
    table = {"a": POSITIVE, "c": NOT_NEGATIVE, "b": POSITIVE}
    with pytest.raises(UserError, match=r"^eval\.c=-1 must be >= 0$"):
        check_ranges(node, table, "eval.")


@pytest.mark.parametrize(
    ("command", "overrides", "message"),
    [
        ("sample", ["batch_size=0"], "batch_size=0 must be > 0"),
        ("sample", ["guidance.name=cfgg"], "guidance='cfgg' is not one of: none, classifier, cfg"),
        ("eval", ["eval.repeats=0"], "eval.repeats=0 must be > 0"),
        ("eval", ["metrics=[fid]", "batch_size=-1"], "batch_size=-1 must be > 0"),
        ("eval", ["metrics=[fid]", "eval.swd_projections=0"], "eval.swd_projections=0 must be"),
        ("train", ["trainer.optimizer=sgd"], "trainer.optimizer='sgd' is not one of: adam, adamw"),
        ("train", ["task=denoise"], "task='denoise' is not one of: diffusion, classifier"),
        ("train", ["schedule.num_timesteps=0"], "schedule.num_timesteps=0 must be >= 1"),
    ],
)
def test_the_commands_refuse_keys_out_of_range_before_reading_weights(
    compose, tmp_path, command, overrides, message
):
    """Each command's table is checked before anything is loaded or written: the run folder
    here holds only the run's config.yaml."""
    from diffuse_cli.evaluate.command import check_eval_config
    from diffuse_cli.generate import sample_command
    from diffuse_cli.train.validate import validate_train_config

    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(compose([]), run / "config.yaml", resolve=True)
    cfg = compose([f"run_dir={run}", *overrides], command)
    check = {"sample": sample_command, "eval": check_eval_config, "train": validate_train_config}
    with pytest.raises(UserError, match="^" + re.escape(message)):
        check[command](cfg)
    assert [p.name for p in run.iterdir()] == ["config.yaml"]
