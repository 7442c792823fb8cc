"""A command meets an existing run: which settings must match it and which are the command's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import diffuse_cli as dc
from diffuse_cli import runs
from diffuse_cli.errors import UserError
from diffuse_cli.train.checkpoint import save_checkpoint
from diffuse_cli.train.validate import check_resumable


@pytest.fixture
def run(compose, tmp_path):
    """A run directory trained with model=ddpm on shapes (data.root 'data'), one checkpoint."""
    cfg = compose(["model=ddpm", "model.dropout=0.1", f"run_dir={tmp_path}"])
    OmegaConf.save(cfg, tmp_path / runs.CONFIG_FILE)
    w = {"w": torch.zeros(1)}
    save_checkpoint(tmp_path, 1, w, w, {"state": {}, "param_groups": []}, {})
    return tmp_path


@pytest.mark.parametrize("override", ["data.root=/moved/data", "data.num_workers=4"])
def test_resume_may_read_the_data_from_elsewhere(compose, run, override):
    check_resumable(compose(["model=ddpm", "model.dropout=0.1", override]), run)


def test_resume_refuses_other_data(compose, run):
    with pytest.raises(UserError, match=r"other data settings \(data.seed=1 \(saved: 0\)\)"):
        check_resumable(compose(["model=ddpm", "model.dropout=0.1", "data.seed=1"]), run)


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (["model=ddpm", "model.dropout=0.1", "data.seed=1"], "resume it with data.seed=0"),
        (["model=small"], "resume it with model=ddpm"),
        (["model=ddpm", "model.channel_mult=[1,2]", "model.use_scale_shift_norm=true"],
         "resume it with model.channel_mult=[1,2,2,2] model.use_scale_shift_norm=false"),
        (["task=classifier", "model=ddpm", "model.dropout=0.1"], "resume it with task=diffusion"),
    ],
)  # fmt: skip
def test_a_refused_resume_gives_the_overrides_that_resume_it(compose, run, overrides, fix):
    """e.g. an iddpm run from before model.rescale_timesteps: model.rescale_timesteps=false."""
    with pytest.raises(UserError, match=re.escape(fix)):
        check_resumable(compose(overrides), run)


def with_overrides(compose, run, monkeypatch, *overrides):
    monkeypatch.setattr(runs, "hydra_overrides", lambda: list(overrides))
    return runs.with_run_config(compose(list(overrides), command="eval"), run)


def test_eval_takes_the_data_location_from_the_command_line_only(compose, run, monkeypatch):
    cfg = with_overrides(compose, run, monkeypatch, "data.root=/moved/data")
    assert cfg.data.root == "/moved/data" and cfg.model.name == "ddpm"
    assert with_overrides(compose, run, monkeypatch).data.root == "data"  # the run's


def test_eval_compares_a_named_key_alone(compose, run, monkeypatch):
    """model.dropout=0.1 agrees with the run even though the command's default model (small)
    differs from it in every other key; a disagreeing key is named alone."""
    assert with_overrides(compose, run, monkeypatch, "model.dropout=0.1").model.name == "ddpm"
    with pytest.raises(UserError) as err:
        with_overrides(compose, run, monkeypatch, "model.dropout=0.3")
    assert str(err.value).startswith("model.dropout=0.3 (run: 0.1): the run in")


def test_eval_compares_a_group_choice_whole(compose, run, monkeypatch):
    with pytest.raises(UserError, match=r"model.model_channels=16 \(run: 128\)"):
        with_overrides(compose, run, monkeypatch, "model=small")


def test_sample_may_run_the_network_in_another_memory_layout(compose, run, monkeypatch):
    cfg = with_overrides(compose, run, monkeypatch, "model.channels_last=true")
    assert cfg.model.channels_last and cfg.model.name == "ddpm" and cfg.model.dropout == 0.1


def test_a_group_choice_leaves_out_the_execution_keys_when_it_compares(compose, run, monkeypatch):
    """`sample model=ddpm model.channels_last=true` on a model=ddpm run: the group is compared
    whole but without its execution keys, so the memory layout may differ; the command's
    execution keys are used and every other key is the run's."""
    overrides = ["model=ddpm", "model.channels_last=true", "model.use_checkpoint=true"]
    monkeypatch.setattr(runs, "hydra_overrides", lambda: overrides)
    cfg = runs.with_run_config(compose(overrides, command="sample"), run)
    assert cfg.model.channels_last and cfg.model.use_checkpoint
    saved = OmegaConf.load(run / runs.CONFIG_FILE).model
    assert {**saved, "channels_last": True, "use_checkpoint": True} == dict(cfg.model)


def test_a_group_choice_with_a_package_is_compared_whole(compose, run, monkeypatch):
    """A group choice written with its package (`model@model=small`, Hydra's group@package
    syntax) names the whole group just as `model=small` does: it is compared whole, not taken
    for a command line that leaves the model alone."""
    monkeypatch.setattr(runs, "hydra_overrides", lambda: ["model@model=small"])
    with pytest.raises(UserError, match=r"model.model_channels=16 \(run: 128\)"):
        runs.with_run_config(compose(["model=small"], command="eval"), run)
    monkeypatch.setattr(runs, "hydra_overrides", lambda: ["model@model=ddpm"])
    same = runs.with_run_config(compose(["model=ddpm"], command="eval"), run)
    assert same.model.model_channels == 128


def test_eval_refuses_another_loss_than_the_run_trained_with(compose, run, monkeypatch):
    monkeypatch.setattr(runs, "hydra_overrides", lambda: ["loss=vlb"])
    with pytest.raises(UserError, match=r"loss.name='vlb' \(run: 'simple'\)"):
        runs.with_run_config(compose(["loss=vlb"], command="eval"), run, also=("loss",))
    monkeypatch.setattr(runs, "hydra_overrides", lambda: [])
    kept = runs.with_run_config(compose(["loss=vlb"], command="eval"), run, also=("loss",))
    assert kept.loss.name == "simple"  # not named on the command line: the run's


def test_a_batch_that_does_not_split_is_refused_before_anything_is_written(compose, tmp_path):
    from diffuse_cli.train.trainer import Trainer

    cfg = compose(["trainer.batch_size=7", "trainer.grad_accum=2", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(UserError, match="batch_size=7 must be a positive multiple"):
        Trainer(cfg)
    assert not (tmp_path / "r" / runs.CONFIG_FILE).exists()


def test_an_unknown_spacing_is_refused_with_the_choices(compose):
    import diffuse_cli as dc
    from diffuse_cli.build import resolve_steps

    cfg = compose(["sampler=ddim", "sampler.spacing=bogus", "steps=5"], command="sample")
    with pytest.raises(UserError, match="sampler.spacing='bogus' is not one of: even, "):
        resolve_steps(cfg, dc.build_diffusion(cfg))


def test_keys_added_with_plus_are_refused_with_the_nearest_key(compose):
    from diffuse_cli.config import SCHEMAS, check_known_keys, unknown_keys

    for command in ("train", "sample", "eval"):  # every shipped config is all known keys
        assert unknown_keys(compose([], command=command), SCHEMAS[command]) == {}
    with pytest.raises(UserError, match=r"trainer.max_step is not a setting of `diffuse train` "
                       r"\(did you mean trainer.max_steps\?"):  # fmt: skip
        compose(["+trainer.max_step=5"])  # the Python API refuses it as the CLI does
    cfg = dc.compose_config(["+trainer.max_step=5"], check_keys=False)
    with pytest.raises(UserError, match=r"trainer.max_step is not a setting"):
        check_known_keys(cfg, "train")


def test_a_plus_override_of_an_unknown_top_level_key_is_refused(compose):
    """`+foo=1` adds a top-level key no command reads, as `+trainer.foo=1` adds a nested one."""
    from diffuse_cli.config import check_known_keys

    for command in ("train", "sample", "eval"):
        with pytest.raises(UserError, match=rf"^foo is not a setting of `diffuse {command}`"):
            check_known_keys(dc.compose_config(["+foo=1"], command, check_keys=False), command)


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_sample_and_eval_refuse_an_unknown_key_before_running(
    compose, command, monkeypatch, capsys
):
    """The CLI checks the keys of every command, not only train's: `sample +num_sample=3` (a
    typo of num_samples) is one line, exit 2, and the command does not run."""
    from diffuse_cli.cli import COMMANDS, _task

    ran = []
    monkeypatch.setitem(COMMANDS, command, COMMANDS[command]._replace(run=ran.append))
    cfg = dc.compose_config(["+num_sample=3"], command, check_keys=False)
    with pytest.raises(SystemExit) as exit_:
        _task(command)(cfg)
    assert exit_.value.code == 2 and ran == []
    err = capsys.readouterr().err
    assert err.startswith(
        f"diffuse {command}: error: num_sample is not a setting of `diffuse {command}`"
    )


WRITER = """
import sys
from pathlib import Path
from diffuse_cli.files import write_atomically
for _ in range(300):
    write_atomically(Path(sys.argv[1]), sys.argv[2] * 50_000)
"""


@pytest.mark.cli
def test_two_processes_writing_one_report_each_leave_a_whole_file(tmp_path):
    """Parallel sweep jobs write the same eval/loss.json: with one shared temporary name, one
    writer's rename failed and two writes could mix in one file."""
    import subprocess
    import sys

    path = tmp_path / "loss.json"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag], stderr=subprocess.PIPE)
        for tag in "ab"
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert path.read_text() in ("a" * 50_000, "b" * 50_000)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.json"]  # no temporary file left


def test_a_failed_samples_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    """A full disk used to leave a partial temporary file, which kept the disk full."""
    import errno

    import numpy as np

    from diffuse_cli import generate

    path = tmp_path / "samples.npz"
    generate._save_npz(path, np.zeros((2, 4, 4, 3), np.uint8), None)

    def full_disk(file, **arrays):
        Path(file).write_bytes(b"part of a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space"):
        generate._save_npz(path, np.ones((2, 4, 4, 3), np.uint8), None)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]
    assert np.load(path)["arr_0"].sum() == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [("schedule: [linear\n", "cannot be read (while parsing"), ("", "holds no config")],
)
def test_a_damaged_run_config_is_one_line(tmp_path, text, message):
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        runs.read_run_config(tmp_path)


def test_a_state_file_without_its_step_is_a_damaged_checkpoint(tmp_path):
    from diffuse_cli.train.checkpoint import read_checkpoint

    folder = save_checkpoint(tmp_path, 3, {"w": torch.zeros(2)}, {"w": torch.zeros(2)}, {}, {})
    (folder / "state.json").write_text('{"skipped_steps": 0}')
    with pytest.raises(UserError, match="it is damaged"):
        read_checkpoint(folder)


def test_metrics_lines_that_are_not_text_are_dropped_on_resume(tmp_path):
    from diffuse_cli.train.loggers import MetricsFile

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n\xff\xfe{"step": 2}\n{"step": 3}\n')
    MetricsFile(path, start_step=2)
    assert path.read_text() == '{"step": 1}\n'


def test_the_umask_is_read_as_it_is(tmp_path):
    import os

    from diffuse_cli import files

    old = os.umask(0o027)
    try:
        assert files.current_umask() == 0o027
        path = tmp_path / "cache.safetensors"
        path.write_bytes(b"")
        path.chmod(0o600)  # as safetensors writes it
        files.give_plain_file_mode(path)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
