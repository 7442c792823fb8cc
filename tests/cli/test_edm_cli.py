"""schedule=edm end to end: a tiny class-conditional EDM run and its noisy classifier, trained,
resumed, sampled with every EDM sampler and guidance, evaluated; and the one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli
from omegaconf import OmegaConf
from safetensors.torch import load_file

import diffuse_cli as dc
from diffuse_cli.cli import _task
from diffuse_cli.generate import sample_command
from diffuse_cli.train.checkpoint import latest_checkpoint
from diffuse_cli.train.trainer import train

EDM = ["schedule=edm", "prediction=edm", "loss.weighting=edm"]
QUICK = ["num_samples=6", "batch_size=4", "steps=3", "progress=false"]
# An EDM run on 2-D points with a small MLP: trains a step in milliseconds.
POINTS = [
    *EDM,
    "model=mlp",
    "model.hidden=32",
    "data=moons",
    "data.num_train=64",
    "trainer.batch_size=8",
    "trainer.sample_every=100",
    "trainer.sample_num=4",
    "trainer.sample_steps=5",
    "trainer.progress=false",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/default: an EDM run conditional on the 4 shape classes (through the CLI);
    runs/classifier: its noisy classifier on the same sigma distribution."""
    cwd = tmp_path_factory.mktemp("edm")
    run_cli("train", *TINY, *EDM, "model.num_classes=4", cwd=cwd)
    clf = [*TINY, *EDM, "task=classifier", f"run_dir={cwd / 'runs' / 'classifier'}"]
    train(dc.compose_config(clf, "train"))
    return cwd


def sample(cwd, *overrides):
    cfg = dc.compose_config([f"run_dir={cwd / 'runs' / 'default'}", *QUICK, *overrides], "sample")
    return sample_command(cfg)


def test_an_edm_run_trains_previews_and_samples_with_heun(runs, capsys):
    run = runs / "runs" / "default"
    assert OmegaConf.load(run / "config.yaml").schedule.name == "edm"
    assert (run / "samples" / "step_00000004.png").is_file()  # the heun preview
    out = sample(runs, "sampler=heun")
    assert "5 network evaluations per sample" in capsys.readouterr().out  # 2 N - 1
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (6, 16, 16, 3) and npz["arr_0"].dtype == np.uint8


@pytest.mark.parametrize(
    ("overrides", "folder"),
    [
        pytest.param(("sampler=euler",), "euler-3", marks=pytest.mark.slow),
        (
            ("sampler=ddim", "sampler.spacing=karras", "sampler.eta=0.5"),
            "ddim-3-eta0.5-spacingkarras",
        ),
        pytest.param(("sampler=dpm_solver",), "dpm_solver-3", marks=pytest.mark.slow),
        pytest.param(
            ("sampler=heun", "sampler.s_churn=10"), "heun-3-s_churn10", marks=pytest.mark.slow
        ),
        pytest.param(
            ("sampler=heun", "guidance=cfg", "guidance.scale=2"),
            "heun-3-cfg2",
            marks=pytest.mark.slow,
        ),
        (
            ("sampler=euler", "guidance=classifier", "class_labels=[2]"),
            "euler-3-classifier1-labels2",
        ),
    ],
)
def test_every_edm_sampler_and_guidance_samples(runs, overrides, folder):
    out = sample(runs, *overrides)
    assert out.name == folder
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (6, 16, 16, 3)


def test_the_classifier_reports_accuracy_by_sigma_range(runs):
    rows = [json.loads(line) for line in (runs / "runs/classifier/metrics.jsonl").open()]
    keys = [k for row in rows for k in row if k.startswith("accuracy_sigma")]
    assert keys and all(k.count("-") == 1 for k in keys), keys


def test_eval_loss_of_an_edm_run_is_by_equally_likely_sigma_ranges(runs):
    run = runs / "runs" / "default"
    args = [f"run_dir={run}", "eval.num_batches=2", "eval.batch_size=10", "progress=false"]
    _task("eval")(dc.compose_config(args, "eval"))
    report = json.loads((run / "eval" / "loss.json").read_text())
    buckets = report["buckets"]
    assert len(buckets) == 10 and [b["count"] for b in buckets] == [2] * 10
    assert buckets[0]["sigma_min"] == 0 and buckets[-1]["sigma_max"] is None  # inf: strict JSON
    assert buckets[4]["sigma_max"] == pytest.approx(np.exp(-1.2))  # the median of ln N(-1.2, 1.2)
    mean = np.mean([b["loss"] for b in buckets])
    assert report["loss"] == pytest.approx(mean) and "lambda(sigma)" in report["metric"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["schedule=edm"], "set prediction=edm loss.weighting=edm (or use experiment=edm_shapes)"),
        (
            ["schedule=edm", "loss.weighting=edm"],
            "network F of D = c_skip x + c_out F; set prediction=edm (or",
        ),
        ([*EDM, "loss=hybrid"], "loss=hybrid has no meaning for schedule=edm"),
        ([*EDM, "loss=vlb"], "loss=vlb has no meaning for schedule=edm"),
        ([*EDM, "loss=dsm"], "loss=dsm has no meaning for schedule=edm"),
        ([*EDM, "variance=learned_range"], "variance=learned_range is the variance of a DDPM"),
        ([*EDM, "loss.timesteps=importance"], "loss.timesteps=importance draws integer"),
        ([*EDM, "model.rescale_timesteps=true"], "set model.rescale_timesteps=false"),
        ([*EDM, "loss.weighting=min_snr"], "loss.weighting=min_snr: schedule=edm weights its loss"),
        (["schedule=edm", "prediction=edm"], "loss.weighting=uniform: schedule=edm weights"),
        (["prediction=edm"], "prediction=edm is the preconditioned network of schedule=edm"),
    ],
)
def test_train_refuses_what_edm_has_no_meaning_for_in_one_line(
    compose, tmp_path, capsys, overrides, message
):
    cfg = compose([*TINY, *overrides, f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_info:
        _task("train")(cfg)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_sample_and_eval_refuse_what_edm_has_no_meaning_for(runs, compose, tmp_path, capsys):
    run = runs / "runs" / "default"
    ddpm_run = tmp_path / "ddpm"
    ddpm_run.mkdir()
    OmegaConf.save(compose(TINY), ddpm_run / "config.yaml")  # no checkpoint is needed to refuse
    cases = [
        ("sample", ["sampler=ddpm"], run, "sampler=ddpm has no form for schedule=edm"),
        ("sample", ["sampler=pc"], run, "use sampler=heun or sampler=euler"),
        ("sample", ["sampler=langevin"], run, "sampler=langevin has no form for schedule=edm"),
        ("sample", ["sampler=ddim"], run, "sampler.spacing=even spaces a DDPM's integer"),
        ("sample", ["sampler=heun", "sampler.s_churn=5"], ddpm_run, "sampler.s_churn=5"),
        ("eval", ["metrics=[nll]"], run, "metrics=[nll] is the discrete variational bound"),
    ]
    before = sorted(p.name for p in (run / "samples").iterdir())
    for command, overrides, folder, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            _task(command)(compose([*overrides, f"run_dir={folder}"], command=command))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (run / "samples").iterdir()) == before  # nothing written


def final_weights(run_dir):
    folder = latest_checkpoint(run_dir)
    return load_file(folder / "model.safetensors"), load_file(folder / "ema.safetensors")


def test_resuming_an_edm_run_reproduces_the_uninterrupted_run(compose, tmp_path):
    """The sigmas are drawn from the per-micro-batch seeded RNG: 2 + 2 steps equal 4 steps."""
    common = [*POINTS, "trainer.ckpt_every=2", "model.dropout=0.1", "trainer.grad_accum=2"]
    train(compose([*common, "trainer.max_steps=4", f"run_dir={tmp_path / 'a'}"]))
    train(compose([*common, "trainer.max_steps=2", f"run_dir={tmp_path / 'b'}"]))
    train(compose([*common, "trainer.max_steps=4", f"run_dir={tmp_path / 'b'}"]))
    (wa, ea), (wb, eb) = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(ea[k], eb[k], rtol=0, atol=0, msg=k)


def test_an_edm_run_trains_in_bf16(compose, tmp_path):
    cfg = [*POINTS, "trainer.mixed_precision=bf16", "trainer.max_steps=4", "trainer.log_every=2"]
    train(compose([*cfg, f"run_dir={tmp_path / 'bf16'}"]))
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").open()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses and all(np.isfinite(losses))


def test_export_to_diffusers_refuses_an_edm_run(compose):
    from diffuse_cli.errors import UserError
    from diffuse_cli.interop.diffusers_export import check_exportable

    with pytest.raises(UserError, match="it is an EDM run"):
        check_exportable(compose([*TINY, *EDM]))
