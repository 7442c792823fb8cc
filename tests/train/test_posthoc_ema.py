"""Post-hoc EMA (EDM2, Karras et al. 2024, sec. 3 and app. C): the power-function profiles
against their formulas and numeric integrals, the power EMA against a direct weighted average,
and runs that track, snapshot and reconstruct EMAs of any width."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import diffuse_cli as dc
from diffuse_cli.errors import UserError
from diffuse_cli.posthoc_ema import (
    MAX_STD,
    combination,
    gamma_of_std,
    profile_inner,
    std_of_gamma,
    step_weights,
)
from diffuse_cli.train import ema_snapshots
from diffuse_cli.train.ema import PowerEMA
from diffuse_cli.train.trainer import train

# A 2-D toy run: 8 steps of the MLP, a checkpoint every 4 and snapshots every 2 steps.
POWER = [
    "experiment=toy2d",
    "trainer.max_steps=8",
    "trainer.batch_size=16",
    "trainer.warmup_steps=2",
    "trainer.sample_num=0",
    "trainer.progress=false",
    "trainer.log_every=4",
    "schedule.num_timesteps=20",
    "schedule.scale_betas=false",
    "trainer.ema=power",
    "trainer.ckpt_every=4",
    "trainer.ema_snapshot_every=2",
]


def integrate(f, a: float, b: float, n: int = 200_001) -> float:
    """Simpson's rule on n points (n odd)."""
    x = np.linspace(a, b, n)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return float((b - a) / (3 * (n - 1)) * (w * f(x)).sum())


def profile(t: float, gamma: float):
    """EDM2 eq. 3: p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t], else 0."""
    return lambda tau: np.where(tau <= t, (gamma + 1) * tau**gamma / t ** (gamma + 1), 0.0)


@pytest.mark.parametrize("std", [0.005, 0.03, 0.05, 0.08, 0.1, 0.2, 0.28, MAX_STD])
def test_gamma_solves_the_width_formula(std):
    gamma = gamma_of_std(std)
    assert gamma >= 0
    # sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1 (EDM2 eq. 4 squared)
    assert std**2 * (gamma + 2) ** 2 * (gamma + 3) == pytest.approx(gamma + 1, rel=1e-12)
    assert std_of_gamma(gamma) == pytest.approx(std, rel=1e-12)


def test_gamma_matches_the_papers_pairs_and_refuses_impossible_widths():
    # EDM2 sec. 3.1: sigma_rel 0.10 is gamma 6.94, 0.05 is gamma 16.97; the widest is gamma 0
    assert gamma_of_std(0.10) == pytest.approx(6.94, abs=0.005)
    assert gamma_of_std(0.05) == pytest.approx(16.97, abs=0.005)
    assert gamma_of_std(MAX_STD) == pytest.approx(0.0, abs=1e-9)
    for bad in (0.0, -0.1, MAX_STD * 1.001):
        with pytest.raises(ValueError):
            gamma_of_std(bad)


@pytest.mark.parametrize("gamma", [0.0, 1.83, 6.94, 16.97])
def test_a_profile_is_a_density_whose_relative_width_is_sigma_rel(gamma):
    t = 3.0
    p = profile(t, gamma)
    mass = integrate(p, 0, t)
    mean = integrate(lambda x: x * p(x), 0, t)
    var = integrate(lambda x: x**2 * p(x), 0, t) - mean**2
    assert mass == pytest.approx(1.0, rel=1e-7)
    assert math.sqrt(var) / t == pytest.approx(std_of_gamma(gamma), rel=1e-6)


@pytest.mark.parametrize(
    "a, b", [((5.0, 6.94), (5.0, 16.97)), ((2.0, 16.97), (7.0, 6.94)), ((7.0, 0.0), (3.0, 2.5))]
)
def test_profile_inner_products_match_numeric_integration(a, b):
    # the product is 0 past the shorter profile's end (its t): Simpson's rule up to there
    numeric = integrate(lambda x: profile(*a)(x) * profile(*b)(x), 0.0, min(a[0], b[0]))
    assert profile_inner(*a, *b) == pytest.approx(numeric, rel=1e-6)


def test_step_weights_are_the_profile_integrated_over_each_step():
    gamma, t = 6.94, 12
    w = step_weights(t, gamma)
    assert w.sum() == pytest.approx(1.0, rel=1e-12)
    for tau in (1, 5, 12):
        assert w[tau - 1] == pytest.approx(integrate(profile(t, gamma), tau - 1, tau), rel=1e-6)


def test_power_ema_update_equals_the_weighted_average_of_every_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ema = PowerEMA(model, [0.05, 0.2])
    history = []
    with torch.no_grad():
        for step in range(1, 31):
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            history.append(torch.cat([p.flatten() for p in model.parameters()]).double())
            ema.update(model, step)
    theta = torch.stack(history)
    for std, shadow in zip(ema.stds, ema.models, strict=True):
        expected = torch.from_numpy(step_weights(30, gamma_of_std(std))) @ theta
        got = torch.cat([p.flatten() for p in shadow.parameters()]).double()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_an_untracked_width_is_reconstructed_as_closely_as_its_profile_fits():
    """Snapshots of sigma_rel 0.05 and 0.10 every 20 of 400 steps give sigma_rel 0.08 to the
    profile fit error (0.19% in L2 here): the fit is of continuous profiles, and the per-step
    weights of a power EMA are exactly their integrals over each step, so the weights match to
    the same error; on a random-walk trajectory the result is within 0.1% of the spread
    between the tracked EMAs."""
    rng = np.random.default_rng(0)
    steps, every = 400, 20
    theta = np.cumsum(rng.standard_normal((steps, 64)), axis=0)

    def weights(t: int, std: float) -> np.ndarray:
        out = np.zeros(steps)
        out[:t] = step_weights(t, gamma_of_std(std))
        return out

    stored = [(t, s) for t in range(every, steps + 1, every) for s in (0.05, 0.10)]
    x, fit_error = combination(stored, (steps, 0.08))
    assert 1e-4 < fit_error < 0.005
    reconstructed = sum(c * weights(t, s) for c, (t, s) in zip(x, stored, strict=True))
    target = weights(steps, 0.08)
    error = np.linalg.norm(reconstructed - target) / np.linalg.norm(target)
    assert error == pytest.approx(fit_error, rel=0.05)
    spread = np.linalg.norm((weights(steps, 0.05) - weights(steps, 0.10)) @ theta)
    assert np.linalg.norm((reconstructed - target) @ theta) < 1e-3 * spread


def test_a_width_far_from_the_snapshots_fits_badly():
    stored = [(t, s) for t in range(2, 9, 2) for s in (0.05, 0.10)]
    assert combination(stored, (8, 0.05))[1] < 1e-6  # a stored profile: exact
    assert combination(stored, (8, 0.01))[1] > ema_snapshots.MAX_FIT_ERROR


@pytest.fixture(scope="module")
def power_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("power") / "run"
    train(dc.compose_config([*POWER, f"run_dir={run}"]))
    return run


def test_a_power_run_writes_its_snapshots_and_the_first_profile_as_its_ema(power_run):
    root = power_run / "ema_snapshots"
    assert sorted(p.name for p in root.iterdir()) == [f"step_0000000{s}" for s in (2, 4, 6, 8)]
    assert sorted(p.name for p in (root / "step_00000008").iterdir()) == [
        "std_0.050.safetensors",
        "std_0.100.safetensors",
    ]
    ckpt = power_run / "checkpoints" / "step_00000008"
    ema, first = (
        load_file(ckpt / "ema.safetensors"),
        load_file(root / "step_00000008" / "std_0.050.safetensors"),
    )
    assert all(torch.equal(ema[k], first[k]) for k in ema)
    profiles = load_file(ckpt / "ema_profiles.safetensors")
    second = load_file(root / "step_00000008" / "std_0.100.safetensors")
    assert all(torch.equal(profiles[f"std_0.100/{k}"], second[k]) for k in second)
    assert any(not torch.equal(first[k], second[k]) for k in first)


@pytest.mark.cuda
def test_reconstructing_a_tracked_width_gives_its_snapshot(power_run):
    """The target profile is one of the stored ones (the snapshot at the same step), so the
    least-squares weights are that snapshot's 1 and ~1e-16 for the others: the result equals
    the tracked EMA to float32 rounding (here bit-for-bit). A width between snapshots' is not
    exact: see the test above."""
    cached = power_run / "ema_reconstructed"
    for std in ("0.050", "0.100"):
        _, model, _ = dc.load_run(power_run, ema_std=float(std))
        snap = load_file(power_run / "ema_snapshots" / "step_00000008" / f"std_{std}.safetensors")
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, snap[k], rtol=0, atol=1e-7)
    names = sorted(p.name for p in cached.iterdir())
    assert len(names) == 2 and names[0].startswith("std_0.050-step_00000008-")


def test_a_reconstruction_is_cached_and_reused_while_its_snapshots_are_unchanged(
    power_run, monkeypatch
):
    *_, first = dc.open_run(power_run, ema_std=0.08)
    _, _, _, at_six = dc.open_run(power_run, ema_std=0.08, step=6)
    assert (first.step, at_six.step) == (8, 6) and first.sha256 != at_six.sha256

    def no_recompute(*args):
        raise AssertionError("the cached reconstruction was not reused")

    monkeypatch.setattr(ema_snapshots, "_combine", no_recompute)
    *_, again = dc.open_run(power_run, ema_std=0.08)
    assert again.sha256 == first.sha256 and again.folder.name == "step_00000008"


@pytest.mark.parametrize(
    "std, step, message",
    [
        (0.5, None, "ema_std=0.5 is outside (0, 0.289]"),
        (0.0, None, "is outside (0, 0.289]"),
        (0.01, None, "ema_std=0.01 cannot be expressed by the 8 EMA snapshots"),
        (0.08, 5, "has no EMA snapshot of step 5"),
    ],
)
def test_a_width_the_snapshots_cannot_give_is_refused_in_one_line(power_run, std, step, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("]", r"\]")) as err:
        dc.load_run(power_run, ema_std=std, step=step)
    assert "\n" not in str(err.value)


def test_ema_std_on_an_exponential_run_is_refused(power_run, tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(power_run / "config.yaml")
    cfg.trainer.ema = "exponential"
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))  # refused before any weights
    with pytest.raises(UserError, match="was trained with trainer.ema=exponential; drop ema_std"):
        dc.load_run(tmp_path, ema_std=0.08)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.ema=powr"], "trainer.ema='powr' is not one of: exponential, power"),
        (["trainer.ema_std=[0.05,0.3]"], "must list widths in (0, 0.289]"),
        (["trainer.ema_std=[0.05,0.0501]"], "names one width twice"),
        (["trainer.ema_snapshot_every=3"], "must be > 0 and divide trainer.ckpt_every=4"),
    ],
)
def test_bad_power_ema_settings_are_refused_before_training(compose, tmp_path, overrides, message):
    from diffuse_cli.train.validate import validate_train_config

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("]", r"\]")):
        validate_train_config(compose([*POWER, *overrides, f"run_dir={tmp_path}"]))


@pytest.mark.cuda
def test_resume_with_power_ema_is_exact_and_remakes_the_lost_snapshots(
    compose, power_run, tmp_path
):
    """Interrupted after step 4's checkpoint, with a snapshot of step 6 written before the
    crash, a half-written one of step 8 and one of step 10: the resumed run drops them and ends
    with the checkpoint and snapshots of an uninterrupted run, bit for bit."""
    b = tmp_path / "b"  # power_run is the uninterrupted run
    train(compose([*POWER, "trainer.max_steps=4", f"run_dir={b}"]))
    stale = b / "ema_snapshots"
    (stale / "step_00000006").mkdir()
    (stale / "step_00000006" / "std_0.050.safetensors").write_bytes(b"from a lost future")
    (stale / ".tmp-step_00000008").mkdir()
    (stale / "step_00000010").mkdir()  # of a longer run before a fresh start, say
    train(compose([*POWER, f"run_dir={b}"]))
    assert sorted(p.name for p in stale.iterdir()) == sorted(
        p.name for p in (power_run / "ema_snapshots").iterdir()
    )
    for sub in (
        "checkpoints/step_00000008",
        *(f"ema_snapshots/step_0000000{s}" for s in (2, 4, 6, 8)),
    ):
        files = sorted(p.name for p in (power_run / sub).glob("*.safetensors"))
        assert files == sorted(p.name for p in (b / sub).glob("*.safetensors")), sub
        for name in files:
            ta, tb = load_file(power_run / sub / name), load_file(b / sub / name)
            assert all(torch.equal(ta[k], tb[k]) for k in ta), (sub, name)
    assert not (stale / ".tmp-step_00000008").exists()


def test_resuming_with_other_ema_widths_is_refused(compose, power_run):
    from diffuse_cli.train.validate import check_resumable

    check_resumable(compose([*POWER, f"run_dir={power_run}"]), power_run)  # the same: resumes
    for other in ("trainer.ema_std=[0.05,0.2]", "trainer.ema=exponential"):
        with pytest.raises(UserError, match=r"trainer.ema=power trainer.ema_std=\[0.050,0.100\]"):
            check_resumable(compose([*POWER, other, f"run_dir={power_run}"]), power_run)


@pytest.mark.cuda
def test_sample_and_eval_with_ema_std_write_tagged_outputs(compose, power_run):
    from diffuse_cli.evaluate.command import eval_command
    from diffuse_cli.generate import sample_command

    cfg = compose([f"run_dir={power_run}", "ema_std=0.08", "num_samples=8", "steps=5",
                   "sampler=ddim", "progress=false"], "sample")  # fmt: skip
    out = sample_command(cfg)
    assert out == power_run / "samples" / "ddim-5-ema0.080"
    assert (out / "samples.npz").is_file()
    reports = {}
    for std in ("0.050", "0.080"):
        cfg = compose([f"run_dir={power_run}", "metrics=[loss]", "eval.num_batches=1",
                       "eval.batch_size=32", f"ema_std={std}"], "eval")  # fmt: skip
        (path,) = eval_command(cfg)
        assert path == power_run / "eval" / f"loss-ema{std}.json"
        reports[std] = json.loads(path.read_text())
    assert [r["ema_std"] for r in reports.values()] == [0.05, 0.08]
    assert reports["0.050"]["weights_sha256"] != reports["0.080"]["weights_sha256"]


@pytest.mark.slow
@pytest.mark.cli
def test_an_eval_sweep_over_ema_std_gives_one_report_per_width(compose, cli):
    run = cli.cwd / "sweep"  # 20 snapshot steps: enough to express sigma_rel 0.03 (fit 2.6%)
    train(compose([*POWER, "trainer.max_steps=40", "trainer.ckpt_every=20", f"run_dir={run}"]))
    cli("eval", "-m", f"run_dir={run}", "metrics=[swd]", "sampler=ddim", "steps=5",
        "eval.num_samples=100", "ema_std=0.03,0.05,0.08,0.12")  # fmt: skip
    digests = set()
    for std in ("0.030", "0.050", "0.080", "0.120"):
        report = json.loads((run / "eval" / f"ddim-5-ema{std}" / "points.json").read_text())
        assert report["ema_std"] == float(std) and report["metrics"]["swd"] > 0
        digests.add(report["weights_sha256"])
    assert len(digests) == 4


KILLER = """
import os, signal, sys
from diffuse_cli.train import ema_snapshots
from diffuse_cli.train.trainer import Trainer

def kill_on_call(fn, n):
    count = [0]
    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped

{patch}
from diffuse_cli.cli import main
main(sys.argv[1:])
"""
KILL_POINTS = {
    # after the snapshot of step 6, two steps past the checkpoint of step 4
    "after_a_snapshot": "Trainer.train_step = kill_on_call(Trainer.train_step, 7)",
    # inside the snapshot of step 6: its first profile written, not the second
    "inside_a_snapshot": "ema_snapshots.save_file = kill_on_call(ema_snapshots.save_file, 6)",
}


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_then_resume_gives_the_snapshots_of_an_uninterrupted_run(tmp_path, point):
    import os
    import signal
    import subprocess
    import sys

    from conftest import run_cli

    run_cli("train", *POWER, "name=straight", cwd=tmp_path)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER.format(patch=KILL_POINTS[point]), "train", *POWER],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run, straight = tmp_path / "runs" / "toy2d", tmp_path / "runs" / "straight"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    run_cli("train", *POWER, cwd=tmp_path)
    assert sorted(p.name for p in (run / "ema_snapshots").iterdir()) == sorted(
        p.name for p in (straight / "ema_snapshots").iterdir()
    )
    for path in sorted((straight / "ema_snapshots").rglob("*.safetensors")):
        a, b = load_file(path), load_file(run / path.relative_to(straight))
        assert all(torch.equal(a[k], b[k]) for k in a), path


def test_a_report_from_before_ema_std_counts_as_the_checkpoints_ema():
    from diffuse_cli.evaluate.quality import samples_identity

    old = {"checkpoint": "step_00000008", "ema": True}
    assert samples_identity(old) == samples_identity(old | {"ema_std": None})
    assert samples_identity(old) != samples_identity(old | {"ema_std": 0.08})


def test_a_refused_ema_std_writes_nothing(compose, power_run):
    from conftest import checksums

    from diffuse_cli.generate import sample_command

    before = checksums(power_run)
    for std in ("0.01", "0.3"):
        cfg = compose([f"run_dir={power_run}", f"ema_std={std}", "num_samples=4", "steps=5",
                       "sampler=ddim", "progress=false"], "sample")  # fmt: skip
        with pytest.raises(UserError, match=f"ema_std={std}"):
            sample_command(cfg)
    assert checksums(power_run) == before


def test_a_skipped_step_keeps_each_power_ema_the_profile_average_of_every_step(compose, tmp_path):
    """Step 3's loss is NaN, so it is skipped: its weights are step 2's, and the power EMA
    after step 4 is still the profile's weighted average over all four steps (not updating
    it at step 3 would leave step 3's share with the steps before)."""
    from diffuse_cli.train.trainer import Trainer

    wide = ["trainer.ema_std=[0.2,0.28]", "trainer.lr=0.01"]  # early steps weigh enough to see
    trainer = Trainer(compose([*POWER, *wide, "trainer.max_steps=4", f"run_dir={tmp_path}"]))
    losses, step_of_call, history = trainer.task.losses, [0], []

    def nan_on_step_three(*args, **kwargs):
        out = losses(*args, **kwargs)
        step_of_call[0] += 1
        return {**out, "loss": out["loss"] * float("nan")} if step_of_call[0] == 3 else out

    train_step = trainer.train_step

    def recording(*args, **kwargs):
        out = train_step(*args, **kwargs)
        history.append(torch.cat([p.detach().flatten() for p in trainer.network.parameters()]))
        return out

    trainer.task.losses, trainer.train_step = nan_on_step_three, recording
    trainer.fit()
    assert (
        json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["skipped_steps"] == 1
    )
    assert torch.equal(history[1], history[2])
    theta = torch.stack(history).double()
    for std, shadow in zip(trainer.ema.stds, trainer.ema.models, strict=True):
        expected = torch.from_numpy(step_weights(4, gamma_of_std(std))) @ theta
        got = torch.cat([p.flatten() for p in shadow.parameters()]).double()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_ema_std_with_the_raw_weights_is_refused(compose):
    from diffuse_cli.evaluate.command import check_eval_config

    cfg = compose(["ema_std=0.08", "eval.ema=false"], "eval")
    with pytest.raises(UserError, match="ema_std reconstructs an EMA; drop eval.ema=false"):
        check_eval_config(cfg)
    with pytest.raises(UserError, match="cannot go with the raw weights"):
        dc.load_run("no-such-run", ema=False, ema_std=0.08)
