"""The CLI end to end, as a user runs it: train, resume, sample, eval, sweeps and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, checksums, run_cli, run_cli_in_process

# Subprocesses, as a user runs the commands; a command's own behaviour (files, messages, exit
# status) is checked in this process (run_cli_in_process: no Python start-up per call).
pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained once through the CLI and shared by the tests of this module."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = run_cli("train", *TINY, cwd=cwd)
    return cwd, cwd / "runs" / "default", proc


def test_top_level_help_lists_commands(cli):
    out = run_cli_in_process("--help", cwd=cli.cwd).stdout
    for command in ("train", "sample", "eval", "import", "export"):
        assert f"  {command} " in out


def test_no_command_is_a_usage_error_and_version_prints(cli):
    from diffuse_cli import __version__

    proc = cli(check=False)
    assert proc.returncode == 2 and not proc.stdout and "usage: diffuse <command>" in proc.stderr
    assert cli("--version").stdout.strip() == f"diffuse {__version__}"


def test_command_help_lists_groups(cli):
    out = run_cli_in_process("train", "--help", cwd=cli.cwd).stdout
    assert "schedule: cosine, edm, linear, ncsn" in out and "trainer:" in out
    samplers = "sampler: ddim, ddpm, dpm_solver, euler, heun, langevin, pc"
    assert samplers in run_cli_in_process("sample", "--help", cwd=cli.cwd).stdout


def test_cfg_job_prints_the_composed_config(cli):
    out = run_cli_in_process("train", "schedule=cosine", "--cfg", "job", cwd=cli.cwd).stdout
    assert "name: cosine" in out and not (cli.cwd / "runs").exists()


def test_unknown_command(cli):
    proc = run_cli_in_process("trian", cwd=cli.cwd, check=False)
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr


@pytest.mark.cuda
def test_train_writes_the_run_directory(trained):
    _, run, _ = trained
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_00000002",
        "step_00000004",
    ]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"):
        assert (run / "checkpoints" / "step_00000004" / name).is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert {"loss", "lr", "grad_norm", "img_per_s", "world_size"} <= set(rows[0])
    assert (run / "samples" / "step_00000004.png").is_file()


@pytest.mark.cuda
def test_sample_ddim_writes_npz_and_grid(trained):
    cwd, run, _ = trained
    proc = run_cli_in_process(
        "sample",
        "sampler=ddim",
        "steps=5",
        "num_samples=3",
        "batch_size=2",
        "progress=false",
        cwd=cwd,
    )
    out = run / "samples" / "ddim-5"
    arr = np.load(out / "samples.npz")["arr_0"]
    assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8
    assert (out / "grid.png").is_file() and "runs/default/samples/ddim-5" in proc.stdout
    assert "step_00000004 EMA" in proc.stdout  # which weights drew them


@pytest.mark.cuda
def test_sample_ddpm_defaults_to_the_full_chain(trained):
    cwd, run, _ = trained
    run_cli_in_process("sample", "sampler=ddpm", "num_samples=2", "progress=false", cwd=cwd)
    assert (run / "samples" / "ddpm-50" / "samples.npz").is_file()


@pytest.mark.cuda
def test_sample_does_not_depend_on_batch_size(trained):
    cwd, run, _ = trained
    arrays = []
    for bs in (1, 3):
        out = cwd / f"bs{bs}"
        run_cli_in_process(
            "sample",
            "sampler=ddim",
            "steps=4",
            "num_samples=3",
            f"batch_size={bs}",
            f"out_dir={out}",
            "progress=false",
            cwd=cwd,
        )
        arrays.append(np.load(out / "samples.npz")["arr_0"])
    np.testing.assert_array_equal(arrays[0], arrays[1])


@pytest.mark.cuda
def test_eval_writes_a_held_out_loss_report(trained):
    cwd, run, _ = trained
    run_cli_in_process(
        "eval",
        "eval.num_batches=1",
        "eval.batch_size=20",
        "eval.buckets=4",
        "progress=false",
        cwd=cwd,
    )
    report = json.loads((run / "eval" / "loss.json").read_text())
    assert (run / "eval" / "loss_by_timestep.png").is_file()
    assert report["checkpoint"] == "step_00000004" and report["num_examples"] == 20
    assert [b["t_min"] for b in report["buckets"]] == [0, 12, 25, 38]
    assert all(b["count"] == 5 for b in report["buckets"])
    widths = [b["t_max"] - b["t_min"] + 1 for b in report["buckets"]]  # 12, 13, 13, 12
    losses = [b["loss"] for b in report["buckets"]]
    assert report["loss"] == pytest.approx(np.average(losses, weights=widths))
    run_cli_in_process("eval", "eval.num_batches=1", "eval.ema=false", "progress=false", cwd=cwd)
    raw = json.loads((run / "eval" / "loss-raw.json").read_text())  # beside the EMA report
    assert raw["weights"] == "model" and report["weights"] == "ema"
    assert json.loads((run / "eval" / "loss.json").read_text()) == report
    assert (run / "eval" / "loss_by_timestep-raw.png").is_file()


@pytest.mark.cuda
def test_eval_nll_writes_bits_per_dim_with_every_term(trained):
    cwd, run, _ = trained
    proc = run_cli_in_process(
        "eval",
        "metrics=[nll]",
        "eval.nll_examples=3",
        "eval.batch_size=2",
        "progress=false",
        cwd=cwd,
    )
    report = json.loads((run / "eval" / "nll.json").read_text())
    assert (run / "eval" / "nll_terms.png").is_file() and "bits/dim" in proc.stdout
    assert report["num_examples"] == 3 and report["num_processes"] == 1
    assert report["num_timesteps"] == 50 and [r["t"] for r in report["terms"]] == list(range(50))
    terms = sum(r["bpd"] for r in report["terms"])
    assert report["bpd"] == pytest.approx(report["prior_bpd"] + terms, rel=1e-5)
    assert report["decoder_bpd"] == report["terms"][0]["bpd"]
    assert report["bpd_stderr"] > 0 and report["seconds"] > 0


def test_eval_refuses_an_unknown_metric(trained):
    cwd, run, _ = trained
    proc = run_cli_in_process("eval", "metrics=[nll,fid9]", cwd=cwd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown metric (fid9); choose from: loss, nll, fid, kid, is, pr, swd" in proc.stderr


@pytest.mark.cuda
def test_train_again_resumes_and_extends(trained, tmp_path):
    cwd, run, _ = trained
    proc = run_cli_in_process("train", *TINY, "trainer.max_steps=6", cwd=cwd)
    assert "resuming" in proc.stdout and "from step 4" in proc.stdout
    assert "trained runs/default to step 6; runs/default/checkpoints/step_00000006" in proc.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    before = checksums(run)
    # below the checkpoint
    again = run_cli_in_process("train", *TINY, "trainer.max_steps=3", cwd=cwd)
    assert "already at step 6 >= trainer.max_steps=3; nothing to train" in again.stdout
    assert checksums(run) == before  # config.yaml still says how step 6 was reached


@pytest.mark.parametrize(
    "args,message",
    [
        (["steps=0"], "steps=0 must be a positive"),
        (["steps=51"], "steps=51 is more than the 50 timesteps"),
        (["sampler=ddim", "sampler.eta=-1"], "sampler.eta=-1.0 must be in [0, 1]"),
        (["num_samples=0"], "num_samples=0 must be > 0"),
        (["schedule=cosine"], "schedule.name='cosine' (run: 'linear')"),
    ],
)
def test_sample_user_errors_are_one_line(trained, args, message):
    cwd, run, _ = trained
    before = checksums(run)
    proc = run_cli_in_process("sample", *args, cwd=cwd, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert checksums(run) == before


def test_an_output_that_cannot_be_written_is_one_line(trained, tmp_path):
    """A file where the output folder should be (or a read-only folder, a full disk): the
    path and the reason in one line, exit status 2, instead of a traceback."""
    cwd, _, _ = trained
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_cli_in_process("sample", "steps=2", "num_samples=2", "progress=false",
                              f"out_dir={blocker}", cwd=cwd, check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert str(blocker) in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_sample_without_a_run(cli):
    proc = run_cli_in_process("sample", "run_dir=nowhere", cwd=cli.cwd, check=False)
    assert proc.returncode == 2 and "no run found in 'nowhere'" in proc.stderr
    assert not (cli.cwd / "nowhere").exists()


def test_resume_refuses_another_experiment(trained):
    cwd, run, _ = trained
    before = checksums(run)
    proc = run_cli_in_process("train", *TINY, "schedule=cosine", cwd=cwd, check=False)
    assert proc.returncode == 2 and "refusing to mix" in proc.stderr
    assert checksums(run) == before


def test_wandb_without_login_is_a_hint(cli, tmp_path):
    proc = cli(
        "train",
        *TINY,
        "logger=wandb",
        check=False,
        env={"WANDB_MODE": None, "NETRC": str(tmp_path / "no-netrc"), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2 and "logger.mode=offline" in proc.stderr


def test_sample_num_zero_trains_without_preview_grids(cli):
    run_cli_in_process("train", *TINY, "trainer.max_steps=2", "trainer.sample_num=0", cwd=cli.cwd)
    run = cli.cwd / "runs" / "default"
    assert (run / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
    assert not (run / "samples").exists()
    proc = run_cli_in_process(
        "train", *TINY, "name=neg", "trainer.sample_num=-1", cwd=cli.cwd, check=False
    )
    assert proc.returncode == 2 and "trainer.sample_num=-1 must be >= 0" in proc.stderr


def test_bad_config_value_fails_before_writing(cli):
    proc = run_cli_in_process("train", "trainer.lr=fast", cwd=cli.cwd, check=False)
    assert proc.returncode != 0 and "trainer.lr" in proc.stderr
    assert not (cli.cwd / "runs").exists()


def test_a_plus_override_of_a_misspelt_key_is_refused_before_writing(cli):
    """Hydra's hint for a misspelt key is `+key=value`, which would add a key nothing reads
    and train 1000 steps instead of 5."""
    proc = run_cli_in_process("train", "+trainer.max_step=5", cwd=cli.cwd, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trainer.max_step is not a setting of `diffuse train` (did you mean" in proc.stderr
    assert not (cli.cwd / "runs").exists()  # Hydra made runs/default: both removed again
    (cli.cwd / "runs").mkdir()  # the user's own folder stays
    run_cli_in_process("train", "+trainer.max_step=5", cwd=cli.cwd, check=False)
    assert [p.name for p in (cli.cwd / "runs").iterdir()] == []


def test_a_refused_command_removes_only_the_folders_it_made(cli):
    """`name=a/b` under an existing runs/ left runs/a, and a refused sweep its multirun.yaml
    and the sweep folder; a folder that was there before stays, even when empty."""
    (cli.cwd / "runs").mkdir()
    proc = cli("train", "name=a/b", "+trainer.max_step=5", check=False)
    assert proc.returncode == 2 and list((cli.cwd / "runs").iterdir()) == []
    proc = cli("train", "-m", "name=s", "+trainer.max_step=5", "schedule=linear,cosine",
               check=False)  # fmt: skip
    assert proc.returncode == 2 and list((cli.cwd / "runs").iterdir()) == []
    (cli.cwd / "runs" / "a").mkdir()
    cli("train", "name=a/b", "+trainer.max_step=5", check=False)
    assert [p.name for p in (cli.cwd / "runs").iterdir()] == ["a"]
    assert list((cli.cwd / "runs" / "a").iterdir()) == []


def test_a_refused_command_with_dots_in_its_run_dir_removes_what_it_made(tmp_path):
    (tmp_path / "work").mkdir()
    proc = run_cli("train", "run_dir=../new/x", "+trainer.max_step=5", cwd=tmp_path / "work",
                   check=False)  # fmt: skip
    assert proc.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_a_sweep_that_fails_after_a_job_ran_keeps_its_record(cli):
    """Jobs of `name=a,b` write to runs/a and runs/b: the sweep folder holding only
    multirun.yaml does not mean that nothing ran."""
    proc = cli("train", "-m", *TINY, "trainer.max_steps=1", "name=a,b",
               "trainer.batch_size=8,0", check=False)  # fmt: skip
    assert proc.returncode == 2 and "batch_size=0" in proc.stderr
    assert (cli.cwd / "runs" / "default" / "multirun.yaml").is_file()
    assert list((cli.cwd / "runs" / "a").glob("*/checkpoints/latest"))


def test_a_refused_eval_sweep_leaves_the_run_as_it_was(trained):
    cwd, run, _ = trained
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    proc = run_cli("eval", "-m", f"run_dir={run}", "+foo=1", "metrics=[loss],[nll]",
                   cwd=cwd, check=False)  # fmt: skip
    assert proc.returncode == 2 and "foo is not a setting" in proc.stderr
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_multirun_gives_each_job_its_own_run_dir(cli):
    cli("train", "-m", *TINY, "trainer.max_steps=2", "schedule=linear,cosine")
    from omegaconf import OmegaConf

    configs = sorted((cli.cwd / "runs" / "default").glob("*/config.yaml"))
    assert len(configs) == 2
    schedules = {OmegaConf.load(c).schedule.name for c in configs}
    assert schedules == {"linear", "cosine"}
    for c in configs:  # each job's config names its own directory
        assert OmegaConf.load(c).run_dir == str(c.parent.relative_to(cli.cwd))


def test_sweep_job_folder_names():
    from diffuse_cli.config import job_dir_name

    assert job_dir_name(0, "schedule=cosine") == "schedule=cosine"
    assert job_dir_name(3, "data.root=/a/b") == "data.root=_a_b"
    long = job_dir_name(1, "x" * 300)
    assert long.startswith("1-") and len(long) == 12


@pytest.mark.cuda
def test_toy2d_trains_and_samples_a_scatter_plot(cli):
    common = [
        "experiment=toy2d",
        "trainer.max_steps=3",
        "trainer.batch_size=16",
        "trainer.sample_num=50",
        "trainer.sample_steps=5",
        "trainer.progress=false",
        "schedule.num_timesteps=20",
        "schedule.scale_betas=false",  # 1000/T would take beta_T to 1
    ]
    run_cli_in_process("train", *common, cwd=cli.cwd)
    run = cli.cwd / "runs" / "toy2d"
    assert (run / "samples" / "step_00000003.png").is_file()
    run_cli_in_process(
        "sample",
        "run_dir=runs/toy2d",
        "sampler=ddim",
        "steps=5",
        "num_samples=10",
        "progress=false",
        cwd=cli.cwd,
    )
    arr = np.load(run / "samples" / "ddim-5" / "samples.npz")["arr_0"]
    assert arr.shape == (10, 2) and arr.dtype == np.float32
    assert (run / "samples" / "ddim-5" / "scatter.png").is_file()


def test_config_dir_adds_user_configs(cli):
    mine = cli.cwd / "my_configs" / "schedule"
    mine.mkdir(parents=True)
    (mine / "short.yaml").write_text("name: linear\nnum_timesteps: 10\nbeta_end: 0.2\n")
    out = run_cli_in_process(
        "train",
        "--config-dir",
        str(cli.cwd / "my_configs"),
        "schedule=short",
        "--cfg",
        "job",
        cwd=cli.cwd,
    ).stdout
    assert "num_timesteps: 10" in out and "beta_end: 0.2" in out


@pytest.mark.cuda
def test_bf16_mixed_precision_trains_also_as_the_second_job_of_a_sweep(cli):
    """Accelerate keeps one state per process, and a sweep's jobs share the process: the
    second job used to stop on 'AcceleratorState has already been initialized'."""
    cli("train", "-m", *TINY, "trainer.max_steps=2", "trainer.mixed_precision=no,bf16")
    runs = sorted((cli.cwd / "runs" / "default").glob("*/checkpoints/latest"))
    assert len(runs) == 2


def test_missing_image_folder_is_one_line(cli):
    proc = run_cli_in_process(
        "train", *TINY, "data=image_folder", "data.root=no_such_folder", cwd=cli.cwd, check=False
    )
    assert proc.returncode == 2 and "no_such_folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wandb_offline_needs_no_account(cli, tmp_path):
    cli(
        "train",
        *TINY,
        "trainer.max_steps=2",
        "logger=wandb",
        "logger.mode=offline",
        env={"WANDB_MODE": None, "NETRC": str(tmp_path / "no-netrc")},
    )
    assert list((cli.cwd / "runs" / "default" / "wandb").glob("offline-run-*"))


def _bad_image_folders(cwd: Path) -> None:
    from PIL import Image

    (cwd / "empty").mkdir(exist_ok=True)
    (cwd / "empty" / "readme.txt").write_text("no images here")
    for cls in ("a", "b"):
        (cwd / "corrupt" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(cwd / "corrupt" / cls / f"{i}.png")
    data = (cwd / "corrupt" / "a" / "0.png").read_bytes()
    (cwd / "corrupt" / "a" / "0.png").write_bytes(data[: len(data) // 2])  # truncated


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["sample", "sampler=ddimm"], 1, "Could not find 'sampler/ddimm'"),
        (["train", *TINY, "trainer.lr=fast"], 1, "trainer.lr"),
        (["eval", "run_dir=nowhere"], 2, "no run found in 'nowhere'"),
        (["train", *TINY, "name=e", "data=image_folder", "data.root=empty"], 2, "empty"),
        (["train", *TINY, "name=c", "data=image_folder", "data.root=corrupt"], 2, "0.png"),
        (["train", *TINY, "name=w", "logger=wandb"], 2, "logger.mode=offline"),
    ],
)
def test_bad_input_is_one_line_and_leaves_existing_runs_unchanged(trained, args, code, message):
    """Each bad input of the user-error list: the exit status, a message that names the
    problem, no traceback, and the files of the existing run unchanged."""
    cwd, run, _ = trained
    _bad_image_folders(cwd)
    before = checksums(run)
    env = {"WANDB_MODE": None, "NETRC": str(cwd / "no-netrc"), "HOME": str(cwd)}
    runner = run_cli if "logger=wandb" in args else run_cli_in_process  # wandb: its own process
    proc = runner(*args, cwd=cwd, check=False, env=env)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert checksums(run) == before


@pytest.mark.parametrize("error", [None, ModuleNotFoundError("No module named 'hydra_plugins'")])
def test_a_submitit_launcher_without_its_plugin_names_the_extra(monkeypatch, error):
    import importlib.util

    from diffuse_cli.cli import _missing_launcher

    def find_spec(name, *args):
        if error:
            raise error
        return None

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for launcher in ("slurm", "submitit_local"):
        message = _missing_launcher(["-m", f"hydra/launcher={launcher}", "schedule=cosine"])
        assert f"hydra/launcher={launcher} needs" in message and "diffuse[cluster]" in message
    assert _missing_launcher(["-m", "schedule=linear,cosine"]) is None


@pytest.mark.parametrize(
    "command,overrides,tag",
    [
        ("sample", ["sampler=ddim"], "ddim-50"),
        ("sample", ["sampler=ddim", "sampler.eta=0.5"], "ddim-50-eta0.5"),
        ("sample", ["sampler=ddim", "sampler.spacing=karras"], "ddim-50-spacingkarras"),
        ("sample", ["sampler=euler"], "euler-50"),  # karras is euler's own default
        ("sample", ["sampler=euler", "sampler.spacing=even"], "euler-50-spacingeven"),
        ("sample", ["sampler=dpm_solver", "sampler.order=1"], "dpm_solver-50-order1"),
        ("sample", ["sampler=ddpm", "sampler.clip_denoised=false"], "ddpm-50-no_clip_denoised"),
        ("sample", ["sampler=pc", "sampler.snr=0.1"], "pc-50-snr0.1"),
        ("eval", ["sampler=ddim"], "ddim-50"),
        ("eval", ["sampler=ddim", "eval.ema=false"], "ddim-50-raw"),
        ("sample", ["sampler=ddim", "class_labels=[3]"], "ddim-50-labels3"),
        ("sample", ["sampler=ddim", "class_labels=[0,3]", "seed=2"], "ddim-50-labels0_3-seed2"),
        ("sample", ["sampler=ddim", "class_labels=[1,2,3,4,5,6,7,8,9]"], "ddim-50-labels9-"),
        ("eval", ["sampler=ddim", "eval.ema=false", "seed=1"], "ddim-50-raw-seed1"),
    ],
)
def test_each_sampler_setting_gets_its_own_folder(compose, command, overrides, tag):
    """Sample folders and eval reports are named by every setting that differs from the
    sampler's defaults, so a sweep over them (or EMA against raw weights) overwrites nothing."""
    from diffuse_cli.generate import sampler_tag

    got = sampler_tag(compose(overrides, command), 50)
    assert got == tag if not tag.endswith("-") else got.startswith(tag) and len(got) == len(tag) + 8


def test_loss_and_nll_reports_of_other_seeds_and_weights_do_not_overwrite(compose):
    from diffuse_cli.runs import variant_name

    names = [
        variant_name(compose(overrides, "eval"), "loss")
        for overrides in ([], ["seed=1"], ["eval.ema=false"], ["eval.ema=false", "seed=1"])
    ]
    assert names == ["loss", "loss-seed1", "loss-raw", "loss-raw-seed1"]


def test_sample_and_eval_read_the_checkpoint_asked_for(trained, capsys):
    """checkpoint=<step>: its weights, its own folder and report names, and the steps there
    are when it is missing. (Other tests train this run further: the steps are looked up.)"""
    import diffuse_cli as dc
    from diffuse_cli.errors import UserError
    from diffuse_cli.evaluate.command import eval_command
    from diffuse_cli.generate import sample_command

    _, run, _ = trained
    kept = sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))
    older = kept[0]  # keep_last=2: the one before the latest
    assert len(kept) == 2
    common = [f"run_dir={run}", "sampler=ddim", "steps=3", "num_samples=2", "progress=false"]
    out = sample_command(dc.compose_config([*common, f"checkpoint={older}"], "sample"))
    assert out == run / "samples" / f"ddim-3-step{older}"
    assert f"step_{older:08d} EMA" in capsys.readouterr().out
    latest = np.load(sample_command(dc.compose_config(common, "sample")) / "samples.npz")
    assert not np.array_equal(np.load(out / "samples.npz")["arr_0"], latest["arr_0"])
    quick = [f"run_dir={run}", "eval.num_batches=1", "eval.batch_size=8", "progress=false"]
    (path,) = eval_command(dc.compose_config([*quick, f"checkpoint={older}"], "eval"))
    assert path.name == f"loss-step{older}.json"
    assert json.loads(path.read_text())["checkpoint"] == f"step_{older:08d}"
    missing = f"has no checkpoint of step 3; it has steps {kept[0]}, {kept[1]}"
    with pytest.raises(UserError, match=missing):
        sample_command(dc.compose_config([*common, "checkpoint=3"], "sample"))
