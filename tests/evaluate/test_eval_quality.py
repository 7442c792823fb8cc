"""`diffuse eval metrics=[fid,kid,is,pr]` on the embedded data with the built-in extractor,
sweeps and `diffuse report`, 2-D metrics, and the Inception path with the network replaced."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY32, run_cli_in_process

import diffuse_cli as dc
from diffuse_cli.errors import UserError

QUICK = ["sampler=ddim", "steps=3", "eval.num_samples=12", "batch_size=12", "progress=false"]


@pytest.fixture(scope="module")
def run32(tmp_path_factory):
    """A tiny 32x32 shapes run in <cwd>/runs/default, trained once (in this process: the CLI's
    train is tested elsewhere)."""
    from diffuse_cli.train.trainer import train

    cwd = tmp_path_factory.mktemp("quality")
    run = cwd / "runs" / "default"
    train(dc.compose_config([*TINY32, f"run_dir={run}"]))
    return cwd, run


def eval_in_process(compose, run, overrides):
    """`diffuse eval` as the CLI runs it, in this process (no interpreter start-up)."""
    from diffuse_cli.evaluate.command import eval_command

    cfg = compose([f"run_dir={run}", f"eval.cache_dir={run / 'cache'}", *overrides], "eval")
    return eval_command(cfg)


@pytest.mark.cuda
def test_eval_report_has_everything_to_reproduce_the_number(run32):
    cwd, run = run32
    proc = run_cli_in_process("eval", "metrics=[fid,kid,is,pr]", *QUICK, cwd=cwd)
    report = json.loads((run / "eval" / "ddim-3" / "builtin.json").read_text())
    assert (
        "fd_builtin" in proc.stdout and "wrote runs/default/eval/ddim-3/builtin.json" in proc.stdout
    )
    assert report["run_dir"] == "runs/default" and report["checkpoint_step"] == 4
    assert report["checkpoint"] == "step_00000004" and report["ema"] is True
    assert report["sampler"]["name"] == "ddim" and report["steps"] == 3 and report["eta"] == 0.0
    assert set(report["sampler"]) == {"name", "eta", "spacing", "clip_denoised"}  # ddim's only
    assert report["guidance"] == {"name": "none", "scale": 1.0, "classifier": None}
    assert report["class_labels"] is None  # an unconditional run
    assert report["seed"] == 0 and report["num_samples"] == 12
    assert report["nfe_per_sample"] == 3 and report["num_processes"] == 1
    assert report["extractor"]["name"] == "builtin" and report["extractor"]["weights_sha256"]
    assert {"torch", "torch_fidelity", "diffuse", "numpy"} <= set(report["versions"])
    assert report["seconds"]["total"] > 0
    # 12 samples of 128-dimensional features, splits of 1 sample for is: both said
    assert "biased upward" in report["warnings"][0] and "at most" in report["warnings"][1]
    assert "warning: fd over 12 samples of 128-dimensional features" in proc.stderr
    metrics = report["metrics"]
    assert {"fd_builtin", "kd_builtin", "is_builtin", "precision_builtin", "recall_builtin"} <= set(
        metrics
    )
    assert not any(k.startswith(("fid", "kid")) for k in metrics)  # not Inception: never FID
    assert metrics["kd_builtin_subset_size"] == 12 and 1 <= metrics["is_builtin"] <= 4
    assert report["reference"]["split"] == "test" and report["reference"]["num"] == 32
    assert report["reference"]["cached"] is False
    # the reference statistics are cached under the data root, keyed by data and extractor
    cache = cwd / report["reference"]["cache"]
    assert cache.parent == cwd / "data" / "reference_stats"
    assert cache.name.startswith("shapes-test-32px-3ch-n32-builtin-")
    umask = os.umask(0)
    os.umask(umask)
    assert cache.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as the folder is shared
    from diffuse_cli.evaluate.command import eval_command

    again = [f"run_dir={run}", "metrics=[fid]", *QUICK, f"eval.cache_dir={cache.parent}"]
    (path,) = eval_command(dc.compose_config(again, "eval"))
    second = json.loads(path.read_text())
    assert second["reference"]["cached"] is True and second["reference"]["cache"] == str(cache)
    assert second["metrics"]["fd_builtin"] == pytest.approx(metrics["fd_builtin"], rel=1e-6)


@pytest.mark.parametrize(
    ("sampler", "own"),
    [
        ("ddpm", ()),
        ("ddim", ("eta",)),
        ("dpm_solver", ("order",)),
        ("pc", ("predictor", "corrector_steps", "snr")),
        ("langevin", ("steps_per_level", "epsilon", "denoise")),
    ],
)
def test_a_report_records_the_options_of_the_sampler_that_ran_only(compose, sampler, own):
    """A ddim report used to list order, predictor, snr, steps_per_level, ...: options of
    other samplers that played no part in its samples."""
    from diffuse_cli.evaluate.quality import sampler_settings

    cfg = compose([f"sampler={sampler}", "sampler.spacing=trailing"], "eval")
    expected = {"name": sampler, "spacing": "trailing", "clip_denoised": True}
    assert sampler_settings(cfg) == expected | {k: cfg.sampler[k] for k in own}
    assert "steps_per_level" in cfg.sampler and "order" in cfg.sampler  # the config has all


def test_an_edm_report_records_the_options_of_the_edm_sampler_that_ran(compose):
    """schedule=edm samples with samplers.edm, whose heun reads s_churn, s_tmin, s_tmax and
    s_noise (the DDPM heun reads none of them)."""
    from diffuse_cli.evaluate.quality import sampler_settings

    edm = ["schedule=edm", "prediction=edm", "sampler=heun", "sampler.s_churn=5"]
    assert sampler_settings(compose(edm, "eval")) == {
        "name": "heun", "spacing": "karras", "clip_denoised": True,
        "s_churn": 5.0, "s_tmin": 0.0, "s_tmax": float("inf"), "s_noise": 1.0,
    }  # fmt: skip
    assert sampler_settings(compose(["sampler=heun"], "eval")) == {
        "name": "heun",
        "spacing": "karras",
        "clip_denoised": True,
    }


@pytest.mark.cuda
def test_a_samples_npz_gives_the_numbers_of_the_same_samples_generated(run32, compose):
    from diffuse_cli.generate import sample_command

    cwd, run = run32
    npz = cwd / "npz"
    sample_command(
        compose(
            [
                f"run_dir={run}",
                "sampler=ddim",
                "steps=3",
                "num_samples=12",
                "progress=false",
                f"out_dir={npz}",
            ],
            "sample",
        )  # fmt: skip
    )
    generated = eval_in_process(compose, run, ["metrics=[fid,pr]", *QUICK])[0]
    read = eval_in_process(
        compose, run, ["metrics=[fid,pr]", f"eval.samples={npz / 'samples.npz'}", "progress=false"]
    )[0]
    assert read.parent.name.startswith("file-npz-samples-") and read.name == "builtin.json"
    a, b = json.loads(generated.read_text()), json.loads(read.read_text())
    assert b["num_samples"] == 12 and b["samples"].endswith("samples.npz") and b["steps"] is None
    assert b["metrics"]["fd_builtin"] == pytest.approx(a["metrics"]["fd_builtin"], rel=1e-5)
    assert (b["metrics"]["precision_builtin"], b["metrics"]["recall_builtin"]) == (
        a["metrics"]["precision_builtin"],
        a["metrics"]["recall_builtin"],
    )


def test_a_sweep_writes_one_report_per_job_and_report_makes_a_table_and_plot(run32, capsys):
    from diffuse_cli.evaluate.report import main as report

    cwd, run = run32
    sweep = ["eval", "-m", "metrics=[fid,is]", "sampler=ddim,ddpm", "steps=1,2"]
    run_cli_in_process(*sweep, "eval.num_samples=4", "batch_size=4", "progress=false", cwd=cwd)
    for tag in ("ddim-1", "ddim-2", "ddpm-1", "ddpm-2"):
        assert (run / "eval" / tag / "builtin.json").is_file()
    assert report([str(run)]) == 0  # what `diffuse report runs/default` runs
    table = (run / "report.md").read_text()
    assert table in capsys.readouterr().out and (run / "report.png").stat().st_size > 1000
    lines = table.splitlines()
    assert lines[0].split(" | ")[:3] == ["| run", "sampler", "steps"] and "fd_builtin" in lines[0]
    rows = [line.split(" | ") for line in lines[2:]]
    assert ["ddpm", "2"] in [row[1:3] for row in rows] and ["ddim", "1"] in [r[1:3] for r in rows]


def test_report_of_a_folder_without_reports_is_one_line(tmp_path, capsys):
    from diffuse_cli.evaluate.report import main as report

    assert report([str(tmp_path)]) == 2
    assert f"no sample-quality reports under {tmp_path}" in capsys.readouterr().err
    assert report([str(tmp_path / "nope")]) == 2  # a mistyped folder is named as such
    assert f"{tmp_path / 'nope'} is not a folder" in capsys.readouterr().err


def test_report_shows_a_metric_that_was_not_finite_as_n_a(tmp_path, capsys):
    from diffuse_cli.evaluate.output import write_json
    from diffuse_cli.evaluate.report import main as report

    metrics = {"kd_builtin": float("nan"), "fd_builtin": 3.0}
    record = {"kind": "sample_quality", "sampler": {"name": "ddim"}, "steps": 5,
              "num_samples": 2, "extractor": {"name": "builtin"}, "metrics": metrics}  # fmt: skip
    write_json(record, tmp_path / "eval" / "ddim-5" / "builtin.json")  # kd_builtin: null
    assert report([str(tmp_path)]) == 0
    row = (tmp_path / "report.md").read_text().splitlines()[-1]
    assert "n/a" in row and "3" in row


def test_report_shows_a_metric_s_standard_deviation_beside_it_not_as_a_column():
    """kid_builtin_std (and the other auxiliary keys) are stored beside the metric: the table
    has one kid_builtin column, its cell "value ± std", and no column of their own."""
    from diffuse_cli.evaluate.report import metric_names, table

    metrics = {"kid_builtin": 0.125, "kid_builtin_std": 0.01, "kid_builtin_subset_size": 100,
               "is_builtin": 2.5, "is_builtin_std": 0.25, "is_builtin_splits": 10}  # fmt: skip
    record = {"run": ".", "path": "eval/ddim-5/builtin.json", "sampler": {"name": "ddim"},
              "steps": 5, "num_samples": 8, "extractor": {"name": "builtin"},
              "metrics": metrics}  # fmt: skip
    assert metric_names([record]) == ["kid_builtin", "is_builtin"]
    head, _, row = table([record]).splitlines()
    assert head == "| run | sampler | steps | NFE | samples | features | kid_builtin | is_builtin |"
    assert row == "| . | ddim | 5 |  | 8 | builtin | 0.125 ± 0.01 | 2.5 ± 0.25 |"


def test_report_defaults_to_the_default_run(tmp_path, capsys, monkeypatch):
    from diffuse_cli.evaluate.report import main as report

    monkeypatch.chdir(tmp_path)
    assert report([]) == 2
    assert "runs/default is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["metrics=[swd]"], "metrics swd do not apply to data=shapes (images); use fid, kid"),
        (["metrics=[fid]", "eval.features=RUN"], "is not a classifier run"),
        (["metrics=[fid]", "eval.features=vgg"], "choose inception, builtin, or the folder"),
        (["metrics=[fid]", "eval.num_samples=0"], "eval.num_samples=0 must be > 0"),
        (["metrics=[fid]", "eval.samples=none.npz"], "eval.samples=none.npz: no such file"),
        (
            ["metrics=[fid]", "eval.features=inception", "eval.inception_weights=no.pth"],
            "eval.inception_weights=no.pth: no such file",
        ),  # fmt: skip
    ],
)
def test_eval_quality_user_errors(run32, compose, args, message):
    _, run = run32
    args = [a.replace("RUN", str(run)) for a in args]
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eval_in_process(compose, run, args)


@pytest.mark.parametrize(
    "args,message",
    [
        (["metrics=[nll,swd]"], "metrics swd do not apply to data=shapes"),  # nll ran first
        (["metrics=[nll,fid]", "eval.kid_subsets=0"], "eval.kid_subsets=0 must be > 0"),
        (
            ["metrics=[fid]", "eval.reference_split=val"],
            "choose train or test",
        ),  # was: after sampling
        (["metrics=[fid]", "eval.reference_num=0"], "eval.reference_num=0 must be > 0"),
        (["metrics=[loss,nll]", "eval.nll_examples=0"], "eval.nll_examples=0 must be > 0"),
        (["metrics=[loss,fid]", "eval.num_samples=1"], "metric fid needs at least 2"),
    ],
)
def test_bad_eval_settings_are_refused_before_any_metric_runs(compose, args, message):
    from diffuse_cli.evaluate.command import check_eval_config

    with pytest.raises(UserError, match=message):
        check_eval_config(compose(args, "eval"))


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["metrics=[fid]", "eval.num_samples=1"],
            "eval.num_samples=1: metric fid needs at least 2",
        ),
        (["metrics=[kid]", "eval.num_samples=1"], "metric kid needs at least 2"),
        (["metrics=[pr]", "eval.num_samples=3"], "metric pr needs at least 4, more than"),
        (
            ["metrics=[pr]", "eval.reference_num=3"],
            "reference images=3: metric pr needs at least 4",
        ),
    ],
)
def test_too_few_samples_for_a_metric_are_refused_before_sampling(
    run32, compose, monkeypatch, args, message
):
    """One sample crashed inside the matrix square root and k samples in the k-NN radius; the
    check comes before the samples are drawn."""
    from diffuse_cli.evaluate import quality

    monkeypatch.setattr(quality, "extract_share", lambda *a, **k: pytest.fail("samples were drawn"))
    _, run = run32
    with pytest.raises(UserError, match=message):
        eval_in_process(compose, run, [*QUICK, *args])


def test_reports_of_two_sample_files_in_one_folder_do_not_overwrite(tmp_path):
    from diffuse_cli.evaluate.quality import samples_tag

    a, b = samples_tag(str(tmp_path / "a.npz")), samples_tag(str(tmp_path / "b.npz"))
    assert a != b and a.startswith(f"file-{tmp_path.name}-a-")
    assert samples_tag(str(tmp_path / "x" / ".." / "a.npz")) == a  # the file, not the spelling


def test_reports_are_strict_json(tmp_path):
    from diffuse_cli.evaluate.output import write_json

    path = tmp_path / "r.json"
    write_json({"kd": float("nan"), "rows": [{"is": float("inf")}, 1.5]}, path)
    assert json.loads(path.read_text()) == {"kd": None, "rows": [{"is": None}, 1.5]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_missing_inception_weights_names_the_file_and_the_folder(tmp_path, monkeypatch):
    from diffuse_cli.evaluate.features import inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(inception, "URL", "http://127.0.0.1:9/unreachable.pth")
    with pytest.raises(UserError) as err:
        inception.resolve_weights(None)
    message = str(err.value)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert f"place {inception.FILENAME}" in message and f"in {folder}/" in message
    assert "eval.inception_weights=<file>" in message and "\n" not in message


class FakeInception(torch.nn.Module):
    """Stands in for torch-fidelity's network (weights cannot be downloaded here): the same
    input (uint8 NCHW, 3 channels) and outputs (pool3 features, 1008 logits)."""

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)  # [B, 48]
        return pooled.repeat(1, 2), pooled @ torch.ones(48, 1008) / 48


def test_inception_path_with_the_network_replaced(run32, compose, monkeypatch, tmp_path):
    import torch_fidelity

    from diffuse_cli.evaluate.features import inception

    monkeypatch.setattr(inception, "load_inception", lambda path, device: FakeInception())
    weights = tmp_path / "my-inception.pth"
    weights.write_bytes(b"stand-in weights")
    _, run = run32
    (path,) = eval_in_process(
        compose,
        run,
        ["metrics=[fid,kid,is,pr]", "eval.features=inception", f"eval.inception_weights={weights}",
         *QUICK],
    )  # fmt: skip
    report = json.loads(path.read_text())
    assert path.name == "inception.json"
    assert {"fid", "kid", "is", "precision", "recall"} <= set(report["metrics"])
    assert report["extractor"]["implementation"] == "torch-fidelity"
    assert report["extractor"]["version"] == torch_fidelity.__version__
    assert report["extractor"]["weights"] == "my-inception.pth"
    # the key names the weights, so other weights never reuse these reference statistics
    digest = hashlib.sha256(b"stand-in weights").hexdigest()[:8]
    assert report["extractor"]["weights_sha256"] == digest
    assert f"-inception-v3-compat-{digest}-" in report["reference"]["cache"]


def test_2d_data_gets_sliced_wasserstein_and_energy_distance(compose, tmp_path):
    from diffuse_cli.build import build_data
    from diffuse_cli.evaluate.distances import energy_distance
    from diffuse_cli.evaluate.quality import fresh_points
    from diffuse_cli.train.trainer import train

    run = tmp_path / "toy"
    train(compose(["experiment=toy2d", "trainer.max_steps=3", "trainer.batch_size=16",
                   "trainer.sample_num=20", "trainer.sample_steps=5", "trainer.progress=false",
                   "schedule.num_timesteps=20", "schedule.scale_betas=false",
                   f"run_dir={run}"]))  # fmt: skip
    (path,) = eval_in_process(
        compose, run, ["metrics=[swd,energy]", "sampler=ddim", "steps=5", "eval.num_samples=200"]
    )
    report = json.loads(path.read_text())
    assert path == run / "eval" / "ddim-5" / "points.json" and report["extractor"] is None
    assert report["reference"]["fresh_samples"] == 200 and report["num_samples"] == 200
    assert report["metrics"]["swd"] > 0 and report["metrics"]["energy"] > 0
    # the fresh reference: repeatable, not the test split, but the same distribution
    cfg = compose(["data=moons", "model=mlp"], "eval")
    fresh, test = fresh_points(cfg, 500), build_data(cfg, "test").points[:500]
    assert torch.equal(fresh, fresh_points(cfg, 500)) and not torch.equal(fresh, test)
    assert energy_distance(fresh, test) < 0.05


def test_eval_samples_of_the_wrong_shape_are_refused(run32, compose, tmp_path):
    _, run = run32
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros((4, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(UserError, match=r"need uint8 \[N, 32, 32, 3\] \(NHWC\)"):
        eval_in_process(compose, run, ["metrics=[fid]", f"eval.samples={bad}"])


def test_builtin_extractor_refuses_other_data_and_is_the_default_only_for_shapes32(compose):
    from diffuse_cli.evaluate.features import build_extractor, default_features

    small = compose(["data.image_size=16", "eval.features=builtin"], "eval")
    with pytest.raises(UserError, match="judges the embedded shapes data .32x32 RGB., but"):
        build_extractor(small, torch.device("cpu"))
    assert default_features(compose([], "eval")) == "builtin"
    assert default_features(small) == "inception"
    assert default_features(compose(["data=cifar10"], "eval")) == "inception"


def test_report_rows_name_the_settings_of_their_folder():
    from diffuse_cli.evaluate.report import _sampler

    record = {"sampler": {"name": "ddim"}, "path": "runs/a/eval/ddim-50/builtin.json"}
    assert _sampler(record) == "ddim"
    record["path"] = "runs/a/eval/ddim-50-eta0.5-spacingkarras-raw/builtin.json"
    assert _sampler(record) == "ddim (eta0.5-spacingkarras-raw)"


def test_sample_and_eval_name_the_checkpoint_they_loaded_while_a_run_saves_more(
    run32, compose, monkeypatch, tmp_path, capsys
):
    """A run still training may save a newer checkpoint while sample or eval loads one: the
    step is decided once, so the printed name and the report are those of the loaded weights."""
    import shutil

    from diffuse_cli import loading
    from diffuse_cli.evaluate.command import eval_command
    from diffuse_cli.generate import sample_command
    from diffuse_cli.train.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    shutil.copytree(run32[1], run)
    loaded = latest_checkpoint(run)
    real_load_run = loading.load_run

    def load_run_then_a_newer_checkpoint_lands(*args, **kwargs):
        out = real_load_run(*args, **kwargs)
        newer = loaded.with_name("step_00000099")
        shutil.rmtree(newer, ignore_errors=True)
        shutil.copytree(loaded, newer)
        state = json.loads((newer / "state.json").read_text())
        (newer / "state.json").write_text(json.dumps({**state, "step": 99}))
        (loaded.parent / "latest").write_text(newer.name)
        return out

    monkeypatch.setattr(loading, "load_run", load_run_then_a_newer_checkpoint_lands)
    cfg = compose(
        [f"run_dir={run}", "metrics=[fid]", f"eval.cache_dir={run / 'cache'}", *QUICK], "eval"
    )
    (path,) = eval_command(cfg)
    report = json.loads(path.read_text())
    assert report["checkpoint"] == loaded.name and report["checkpoint_step"] == 4
    (loaded.parent / "latest").write_text(loaded.name)
    sample_command(
        compose([f"run_dir={run}", "sampler=ddim", "steps=3", "num_samples=4", "progress=false"],
                "sample")
    )  # fmt: skip
    assert f"{loaded.name} EMA" in capsys.readouterr().out


def test_a_later_eval_of_the_same_samples_keeps_the_metrics_it_did_not_compute(
    run32, compose, tmp_path, capsys
):
    """The tag names the samples, not the metrics: `metrics=[fid]` after `metrics=[fid,kid]`
    used to replace the report and drop kid. Of other samples, the report is replaced, said."""
    run = tmp_path / "run"
    shutil.copytree(run32[1], run)
    (first,) = eval_in_process(compose, run, ["metrics=[fid,kid]", *QUICK])
    before = json.loads(first.read_text())["metrics"]
    (again,) = eval_in_process(compose, run, ["metrics=[fid]", *QUICK])
    assert again == first
    kept = json.loads(again.read_text())
    assert kept["metrics"] == before  # kd from the first, fd recomputed on the same samples
    assert kept["reference"]["cached"] is True  # the second eval's own provenance
    (earlier,) = kept["earlier"]  # and the first's, for what it kept
    assert set(earlier["metrics"]) == {k for k in before if k.startswith("kd_")}
    assert earlier["versions"] == json.loads(first.read_text())["versions"]
    other = [o if o != "eval.num_samples=12" else "eval.num_samples=13" for o in QUICK]
    capsys.readouterr()
    (replaced,) = eval_in_process(compose, run, ["metrics=[fid]", *other])
    report = json.loads(replaced.read_text())
    assert replaced == first and report["num_samples"] == 13
    assert set(report["metrics"]) == {"fd_builtin"}
    note = capsys.readouterr().err
    assert (
        "kd_builtin" in note and "came from other samples or settings (other num_samples)" in note
    )


def test_a_samples_file_rewritten_in_place_is_other_samples(run32, compose, tmp_path):
    """`diffuse sample` rewrites samples/<tag>/samples.npz as the run trains on: the report
    folder is named by the path, so the file's content decides whether metrics are kept."""
    run = tmp_path / "run"
    shutil.copytree(run32[1], run)
    npz = tmp_path / "samples.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, arr_0=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8))
    quick = ["batch_size=12", "progress=false", f"eval.samples={npz}"]
    (path,) = eval_in_process(compose, run, ["metrics=[fid,kid]", *quick])
    np.savez(npz, arr_0=np.zeros((12, 32, 32, 3), np.uint8))
    (again,) = eval_in_process(compose, run, ["metrics=[fid]", *quick])
    assert again == path
    assert set(json.loads(again.read_text())["metrics"]) == {"fd_builtin"}


def test_damaged_samples_and_reference_cache_are_one_line(run32, compose, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run32[1], run)
    shutil.rmtree(run / "cache", ignore_errors=True)  # other tests' reference caches
    npz = tmp_path / "samples.npz"
    np.savez(npz, arr_0=np.zeros((4, 32, 32, 3), np.uint8))
    npz.write_bytes(npz.read_bytes()[:-30])  # a copy cut short: no zip directory
    with pytest.raises(UserError, match="not an .npz with an arr_0 array"):
        eval_in_process(compose, run, ["metrics=[fid]", f"eval.samples={npz}", *QUICK])
    eval_in_process(compose, run, ["metrics=[fid]", *QUICK])  # fills the reference cache
    (cache,) = (run / "cache").iterdir()
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(UserError, match="cannot be read .*; delete it and run the command again"):
        eval_in_process(compose, run, ["metrics=[fid]", *QUICK])


MERGING_WRITER = """
import sys
from pathlib import Path
from diffuse_cli.evaluate.quality import merge_report
name = sys.argv[2]
for i in range(100):
    record = {"kind": "sample_quality", "seed": 0, "num_samples": 8, "versions": {"w": name},
              "metrics": {f"{name}{i}": float(i)}}
    merge_report(record, Path(sys.argv[1]))
"""


@pytest.mark.cli
def test_parallel_evals_of_the_same_samples_keep_each_others_metrics(tmp_path):
    """Two evals computing different metrics of one tag, e.g. a `metrics=[fid]` and a
    `metrics=[kid]` job of one sweep, each read the report, add theirs and write it back:
    unlocked, one's write replaced the other's between its read and its rename."""
    import subprocess
    import sys

    path = tmp_path / "eval" / "tag" / "builtin.json"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MERGING_WRITER, str(path), name], stderr=subprocess.PIPE
        )  # fmt: skip
        for name in "ab"
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    metrics = json.loads(path.read_text())["metrics"]
    assert sorted(metrics) == sorted(f"{n}{i}" for n in "ab" for i in range(100))
    assert [p.name for p in path.parent.iterdir()] == ["builtin.json"]


def _quality(steps, metrics, sampler="ddim", **extra) -> dict:
    return {"kind": "sample_quality", "sampler": {"name": sampler, **extra}, "steps": steps,
            "num_samples": 8, "extractor": {"name": "builtin"}, "metrics": metrics}  # fmt: skip


def test_report_rows_and_lines_follow_the_steps_of_each_run(tmp_path, capsys):
    """Rows sort by run, sampler and steps as numbers (not as text: 100 before 20); the run
    column names each run folder below the sweep folder; each panel is one metric, with one
    line per run against the sampling steps on a log axis."""
    from diffuse_cli.evaluate.output import write_json
    from diffuse_cli.evaluate.report import collect, figure, table

    for run, scale in (("a", 1.0), ("b", 2.0)):
        for steps in (100, 20, 5):
            record = _quality(steps, {"fd_builtin": scale * steps, "is_builtin": scale})
            record["nfe_per_sample"] = steps + 1
            write_json(record, tmp_path / run / "eval" / f"ddim-{steps}" / "builtin.json")
    records, skipped = collect(tmp_path)
    assert skipped == []
    rows = [line.split(" | ") for line in table(records).splitlines()[2:]]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("| a", "5", "6"), ("| a", "20", "21"), ("| a", "100", "101"),
        ("| b", "5", "6"), ("| b", "20", "21"), ("| b", "100", "101"),
    ]  # fmt: skip
    fig = figure(records)
    fd, is_ = fig.axes[:2]
    assert (fd.get_title(), is_.get_title()) == ("fd_builtin", "is_builtin")
    assert fd.get_xscale() == "log" and fd.get_xlabel() == "sampling steps"
    lines = {line.get_label(): line for line in fd.get_lines()}
    assert list(lines["b: ddim"].get_xdata()) == [5, 20, 100]
    assert list(lines["b: ddim"].get_ydata()) == [10.0, 40.0, 200.0]
    assert list(lines["a: ddim"].get_ydata()) == [5.0, 20.0, 100.0]


def test_langevin_reports_with_other_steps_per_level_are_other_lines():
    """steps counts a Langevin run's noise levels: two runs that differ in steps per level
    were one row label and one zig-zag line."""
    from diffuse_cli.evaluate.report import _sampler

    def record(per_level: int) -> dict:
        sampler = {"name": "langevin", "steps_per_level": per_level}
        return {"sampler": sampler, "path": f"r/eval/langevin-10x{per_level}/builtin.json"}

    assert [_sampler(record(100)), _sampler(record(20))] == ["langevin x100", "langevin x20"]


def test_report_names_the_reports_it_cannot_show(tmp_path, capsys):
    """A damaged or malformed report was dropped without a word (or stopped the report with a
    traceback), and a folder of only damaged ones was said to have none."""
    from diffuse_cli.evaluate.output import write_json
    from diffuse_cli.evaluate.report import main as report

    folder = tmp_path / "eval"
    (folder / "ddim-5").mkdir(parents=True)
    (folder / "ddim-5" / "builtin.json").write_text('{"kind": "sample_quality", "met')
    assert report([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "skipped" in err and "ddim-5" in err and "cannot be read" in err
    assert "none of the 1 sample-quality reports" in err and "Traceback" not in err
    no_steps = _quality(5, {"fd_builtin": 1.0})
    del no_steps["steps"]
    write_json(no_steps, folder / "ddim-6" / "builtin.json")
    write_json(_quality(7, {"fd_builtin": "low"}), folder / "ddim-7" / "builtin.json")
    write_json(_quality(8, {"fd_builtin": 2.0}), folder / "ddim-8" / "builtin.json")
    write_json(_quality(None, {"fd_builtin": 2.0}) | {"sampler": None}, folder / "f" / "p.json")
    assert report([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "no 'steps' in it" in captured.err and "'low', not a number" in captured.err
    assert "neither a sampler nor a samples file" in captured.err
    assert [row.split(" | ")[2] for row in captured.out.splitlines()[2:-1]] == ["8"]
    (tmp_path / "taken").write_text("a file where --out wants a folder")
    assert report([str(tmp_path), "--out", str(tmp_path / "taken")]) == 2
    assert "taken" in capsys.readouterr().err


def _report_of(metrics: dict, version: int = 1, **changes) -> dict:
    report = {"kind": "sample_quality", "run_dir": "r", "samples": None,
              "checkpoint": "step_00000004", "checkpoint_step": 4, "weights_sha256": "aa",
              "ema": True, "sampler": {"name": "ddim"}, "steps": 3, "eta": 0.0,
              "guidance": {"name": "none"}, "class_labels": None, "seed": 0, "num_samples": 8,
              "extractor": {"name": "builtin"},
              "reference": {"split": "test", "num": 32, "cache": "c", "cached": False},
              "metrics": metrics, "versions": {"diffuse": version}, "device": "cpu",
              "num_processes": 1, "seconds": {"total": 1.0}}  # fmt: skip
    return report | changes


@pytest.mark.parametrize(
    "change",
    [
        {"weights_sha256": "bb"},  # trained anew under the same step name
        {"checkpoint": "step_00000008", "checkpoint_step": 8},  # trained on
        {"reference": {"split": "test", "num": 16, "cache": "d", "cached": False}},
        {"guidance": {"name": "classifier", "checkpoint": "step_2", "weights_sha256": "cc"}},
        {"samples_sha256": "dd"},
    ],
)
def test_an_eval_of_other_samples_or_references_drops_the_earlier_metrics(tmp_path, change, capsys):
    from diffuse_cli.evaluate.quality import merge_report

    path = tmp_path / "builtin.json"
    merge_report(_report_of({"fd_builtin": 1.0, "kd_builtin": 0.5}), path)
    merge_report(_report_of({"fd_builtin": 2.0}, **change), path)
    assert json.loads(path.read_text())["metrics"] == {"fd_builtin": 2.0}
    differ = ", ".join(sorted(change))
    assert f"kd_builtin came from other samples or settings (other {differ})" in (
        capsys.readouterr().err
    )


def test_merged_reports_keep_each_metric_from_the_eval_that_computed_it_last(tmp_path):
    """The newer value of a metric computed again wins; each kept metric names the versions it
    came from, through a chain of evals; warnings of both are kept once."""
    from diffuse_cli.evaluate.quality import merge_report

    path = tmp_path / "builtin.json"
    first = _report_of({"fd_builtin": 1.0, "kd_builtin": 0.5, "is_builtin": 3.0}, 1)
    merge_report(first | {"warnings": ["few samples"]}, path)
    second = _report_of({"fd_builtin": 2.0}, 2)
    merge_report(second | {"warnings": ["few samples", "biased"]}, path)
    merge_report(_report_of({"kd_builtin": 0.25}, 3), path)
    merged = json.loads(path.read_text())
    assert merged["metrics"] == {"fd_builtin": 2.0, "kd_builtin": 0.25, "is_builtin": 3.0}
    assert merged["versions"] == {"diffuse": 3}
    assert [(e["metrics"], e["versions"]) for e in merged["earlier"]] == [
        (["fd_builtin"], {"diffuse": 2}), (["is_builtin"], {"diffuse": 1})
    ]  # fmt: skip
    assert merged["warnings"] == ["few samples", "biased"]


def test_the_samples_digest_is_of_the_samples_measured(tmp_path, compose, monkeypatch):
    """`diffuse sample` may rewrite a samples.npz while an eval reads it: the file was read
    twice, for the images and for the digest, so a report could name samples it never saw."""
    import hashlib

    import numpy as np

    from diffuse_cli.evaluate import quality

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(a, arr_0=np.zeros((2, 32, 32, 3), np.uint8))
    np.savez(b, arr_0=np.full((2, 32, 32, 3), 255, np.uint8))
    digest_a = hashlib.sha256(a.read_bytes()).hexdigest()
    real = np.load

    def rewritten_meanwhile(*args, **kwargs):
        out = real(*args, **kwargs)
        os.replace(b, a)
        return out

    monkeypatch.setattr(quality.np, "load", rewritten_meanwhile)
    images, digest = quality.read_samples(compose([f"eval.samples={a}"], "eval"))
    assert digest == digest_a and images.max() == -1.0  # a's black images, a's digest


def test_a_capped_reference_takes_images_evenly_spaced_over_the_split(compose, tmp_path):
    """eval.reference_num=4 of 3 black cats then 9 white dogs: the first 4 were all but one
    cat, a reference of the wrong mix of classes; evenly spaced it is 1 cat and 3 dogs."""
    from types import SimpleNamespace

    from PIL import Image

    from diffuse_cli.evaluate.reference import reference_features

    for cls, grey, count in (("cats", 0, 3), ("dogs", 255, 9)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            Image.new("L", (4, 4), grey).save(tmp_path / cls / f"{i}.png")
    cfg = compose(["data=image_folder", f"data.root={tmp_path}", "data.image_size=4",
                   "eval.reference_split=train", "eval.reference_num=4",
                   f"eval.cache_dir={tmp_path / 'cache'}", "progress=false"], "eval")  # fmt: skip

    def brightness(x):
        return x.float().mean(dim=(1, 2, 3))[:, None].repeat(1, 2), None

    extractor = SimpleNamespace(key="brightness", extract=brightness)
    state = SimpleNamespace(is_main_process=True, process_index=0, num_processes=1)
    reference = reference_features(cfg, extractor, torch.device("cpu"), state)
    assert reference["num"] == 4
    assert sorted(reference["features"][:, 0].tolist()) == [-1.0, 1.0, 1.0, 1.0]
