"""Conditional generation end to end: a class-conditional model and a noisy classifier trained
through the CLI for a few steps, sampled with each kind of guidance; and the errors. The CLI
runs in this process (run_cli_in_process): test_cli.py runs it as a user's subprocess."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, checksums, run_cli_in_process

import diffuse_cli as dc
from diffuse_cli.errors import UserError
from diffuse_cli.generate import sample_command

QUICK = ["num_samples=6", "batch_size=4", "steps=5", "progress=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/default: conditional on the 4 shape classes; runs/classifier: its noisy classifier."""
    cwd = tmp_path_factory.mktemp("conditional")
    run_cli_in_process("train", *TINY, "model.num_classes=4", cwd=cwd)
    clf = run_cli_in_process("train", "task=classifier", *TINY, cwd=cwd)
    return cwd, clf


def sample(cwd: Path, *overrides: str) -> Path:
    cfg = dc.compose_config([f"run_dir={cwd / 'runs' / 'default'}", *QUICK, *overrides], "sample")
    return sample_command(cfg)


def test_classifier_run_reports_accuracy_by_timestep(runs):
    import json

    cwd, _ = runs
    run = cwd / "runs" / "classifier"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= rows[-1]["accuracy"] <= 1.0
    assert any(k.startswith("accuracy_t") for k in rows[-1])
    saved = dc.compose_config([], "train")  # a classifier knows its classes after training
    cfg, classifier = dc.load_classifier(run)
    assert cfg.task == "classifier" and cfg.classifier.num_classes == 4
    assert classifier.num_outputs == 4 and saved.task == "diffusion"
    assert not (run / "samples").exists()  # no sample grids for a classifier


def test_load_classifier_gives_the_raw_weights(runs):
    """ADM guides with the classifier's raw weights, not its EMA."""
    from safetensors.torch import load_file

    from diffuse_cli.train.checkpoint import latest_checkpoint

    run = runs[0] / "runs" / "classifier"
    _, classifier = dc.load_classifier(run)
    raw = load_file(latest_checkpoint(run) / "model.safetensors")
    assert all(torch.equal(v, raw[k]) for k, v in classifier.state_dict().items())


def test_labels_are_saved_and_taken_in_turn(runs):
    cwd, _ = runs
    out = sample(cwd, "class_labels=[3,1]")
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (6, 16, 16, 3) and npz["arr_0"].dtype == np.uint8
        assert npz["arr_1"].tolist() == [3, 1, 3, 1, 3, 1]


@pytest.mark.parametrize(
    ("overrides", "folder"),
    [
        (("guidance=cfg", "guidance.scale=3"), "ddpm-5-cfg3"),
        (("guidance=classifier", "guidance.scale=2"), "ddpm-5-classifier2"),
        (("guidance=classifier", "sampler=ddim"), "ddim-5-classifier1"),
    ],
)
@pytest.mark.cuda
def test_each_guidance_samples_with_random_labels(runs, overrides, folder):
    cwd, _ = runs
    out = sample(cwd, *overrides)
    assert out.name == folder
    with np.load(out / "samples.npz") as npz:
        assert npz["arr_0"].shape == (6, 16, 16, 3)
        labels = npz["arr_1"]
    assert labels.shape == (6,) and ((labels >= 0) & (labels < 4)).all()
    with np.load(sample(cwd, "batch_size=6", *overrides) / "samples.npz") as npz:
        assert np.array_equal(npz["arr_1"], labels)  # labels do not depend on the batch size


def test_unconditional_sampling_of_a_label_dropout_model(runs):
    cwd, _ = runs
    out = sample(cwd, "class_labels=null")
    assert out.name.endswith("-unconditional")
    with np.load(out / "samples.npz") as npz:
        assert "arr_1" not in npz.files


@pytest.mark.cuda
def test_guided_sampling_through_the_cli(runs):
    cwd, _ = runs
    proc = run_cli_in_process("sample", "guidance=classifier", "class_labels=[2]", *QUICK, cwd=cwd)
    assert "classifier guidance x1" in proc.stdout and "network evaluations" in proc.stdout
    with np.load(cwd / "runs/default/samples/ddpm-5-classifier1-labels2/samples.npz") as npz:
        assert npz["arr_1"].tolist() == [2] * 6


def test_eval_of_a_conditional_run_uses_its_labels(runs):
    cwd, _ = runs
    run_cli_in_process("eval", "eval.num_batches=1", "progress=false", cwd=cwd)
    assert (cwd / "runs/default/eval/loss.json").is_file()


def test_a_classifier_for_another_schedule_is_refused(runs, tmp_path):
    cwd, _ = runs
    run_cli_in_process("train", "task=classifier", "name=cosine_clf", "schedule=cosine", *TINY,
                       cwd=cwd)  # fmt: skip
    before = checksums(cwd / "runs")
    proc = run_cli_in_process(
        "sample", "guidance=classifier", "guidance.classifier=runs/cosine_clf", *QUICK,
        cwd=cwd, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "another noise schedule (schedule.name='linear' (classifier: 'cosine')" in proc.stderr
    assert checksums(cwd / "runs") == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("guidance=classifier", "guidance.classifier=runs/nowhere"),
            "runs/nowhere' (config.yaml is missing); train one with `diffuse train "
            "task=classifier run_dir=",
        ),
        (("guidance=classifier", "guidance.classifier=runs/default"), "is not a classifier run"),
        (("guidance=classifier", "guidance.classifier=null"), "needs guidance.classifier="),
        (("guidance=cfg", "class_labels=null"), "class_labels=null has none"),
        (("class_labels=[7]",), "[7] are not class indices 0..3"),
        (("run_dir=runs/classifier",), "not a diffusion model"),
    ],
)
def test_guidance_errors(runs, overrides, message):
    cwd, _ = runs
    before = checksums(cwd / "runs")
    overrides = [o if "runs/" not in o or "=" not in o else o for o in overrides]
    cfg = dc.compose_config(
        [f"run_dir={cwd / 'runs' / 'default'}", *QUICK]
        + [o.replace("runs/", f"{cwd}/runs/") for o in overrides],
        "sample",
    )
    with pytest.raises(UserError) as err:
        sample_command(cfg)
    assert message in str(err.value)
    assert checksums(cwd / "runs") == before


def test_classifier_needs_labelled_data(tmp_path):
    proc = run_cli_in_process("train", "task=classifier", "data=swiss_roll", "model=mlp",
                              *TINY[-10:], cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 2 and "data=swiss_roll has no class labels" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_eval_samples_a_conditional_run_with_guidance_and_classifier_features(runs):
    """Sample quality of a conditional run: labels and guidance as `diffuse sample` uses them,
    recorded in the report; features from the task=classifier run (fd_classifier)."""
    import json

    from diffuse_cli.evaluate.command import eval_command

    cwd, _ = runs
    run, clf = cwd / "runs" / "default", cwd / "runs" / "classifier"
    cfg = dc.compose_config(
        [f"run_dir={run}", "metrics=[fid,is]", f"eval.features={clf}", "eval.num_samples=6",
         f"eval.cache_dir={cwd / 'cache'}", "steps=3", "guidance=cfg", "progress=false"],
        "eval",
    )  # fmt: skip
    eval_command(cfg)
    report = json.loads((run / "eval" / "ddpm-3-cfg3" / "classifier.json").read_text())
    assert report["guidance"]["name"] == "cfg" and report["class_labels"] == "random"
    assert "fd_classifier" in report["metrics"] and "is_classifier" in report["metrics"]
    assert report["extractor"]["run"] == str(clf)


def test_a_report_names_the_weights_that_made_its_samples(runs):
    """The generator's and the guidance classifier's weights by the digest of the bytes
    loaded: a run trained anew under the same step name, or a classifier run that trained on,
    makes other samples, and the report's identity must tell them apart (the merge tests of
    test_eval_quality show that a differing digest drops the earlier metrics)."""
    import hashlib
    import json

    from diffuse_cli.evaluate.command import eval_command
    from diffuse_cli.train.checkpoint import latest_checkpoint

    cwd, _ = runs
    run, clf = cwd / "runs" / "default", cwd / "runs" / "classifier"
    cfg = dc.compose_config(
        [f"run_dir={run}", "metrics=[fid]", f"eval.features={clf}", "eval.num_samples=6",
         f"eval.cache_dir={cwd / 'cache'}", "steps=3", "guidance=classifier",
         f"guidance.classifier={clf}", "progress=false"],
        "eval",
    )  # fmt: skip
    (path,) = eval_command(cfg)
    report = json.loads(path.read_text())

    def sha(folder, name):
        return hashlib.sha256((latest_checkpoint(folder) / name).read_bytes()).hexdigest()

    assert report["weights_sha256"] == sha(run, "ema.safetensors")
    assert report["guidance"]["checkpoint"] == latest_checkpoint(clf).name
    assert report["guidance"]["weights_sha256"] == sha(clf, "model.safetensors")


@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (["schedule.s=0.01"], None),  # s shapes only the cosine schedule: the same noise levels
        (["schedule=cosine"], "another noise schedule"),
        (["classifier.noised=false"], "trained on clean images"),
        (["data=moons", "model=mlp"], "trained on data=moons, the model on data=shapes"),
        (["schedule=ncsn", "loss=dsm"], "was trained with schedule=ncsn"),  # a one-line error
    ],
)
def test_a_guidance_classifier_is_checked_by_what_it_was_trained_for(
    compose, monkeypatch, change, refused
):
    from diffuse_cli import sampling_loop
    from diffuse_cli.sampling_loop import guidance_classifier

    cfg = compose(["guidance=classifier", "guidance.classifier=clf"], "sample")
    trained = compose(["task=classifier", *change])
    monkeypatch.setattr(
        sampling_loop, "open_classifier_everywhere", lambda *a: (trained, "classifier", "w")
    )
    if refused is None:
        assert guidance_classifier(cfg, "cpu") == ("classifier", "w")
    else:
        with pytest.raises(UserError, match=refused):
            guidance_classifier(cfg, "cpu")


def test_samples_of_two_guidance_classifiers_get_two_folders(compose):
    from diffuse_cli.generate import sampler_tag

    def tag(*overrides):
        return sampler_tag(compose(["guidance=classifier", *overrides], "sample"), 5)

    assert tag() == "ddpm-5-classifier1"  # the default classifier, beside the run
    assert tag("guidance.classifier=runs/classifier") == "ddpm-5-classifier1"  # spelt out
    a, b = tag("guidance.classifier=one/clf"), tag("guidance.classifier=two/clf")
    assert a.startswith("ddpm-5-classifier1-clf_clf_") and a != b
