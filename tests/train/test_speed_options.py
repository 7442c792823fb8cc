"""Speed options change how fast training runs, not what it computes or what it saves:
fp16 loss scaling skips and counts overflowing steps, torch.compile leaves plain checkpoint keys,
and data-loading workers give the same batches as the main process."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, run_cli, run_cli_in_process
from safetensors.torch import load_file

from diffuse_cli.train.checkpoint import latest_checkpoint
from diffuse_cli.train.trainer import Trainer

QUIET = [*TINY, "trainer.sample_every=1000"]


class ScaledTrainer(Trainer):
    """fp16's loss scaler, which Accelerate creates only on a GPU, on the CPU: torch's CPU
    GradScaler runs the same checks on the same gradients."""

    def _setup_accelerator(self):
        acc = super()._setup_accelerator()
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        return acc


def test_loss_scaling_skips_overflowing_steps_and_counts_them(compose, tmp_path):
    trainer = ScaledTrainer(compose([*QUIET, "trainer.max_steps=6", f"run_dir={tmp_path}"]))
    losses, calls = trainer.task.losses, [0]

    def overflow_on_steps_1_and_2(*args, **kwargs):
        out = losses(*args, **kwargs)
        if calls[0] in (1, 2):
            out = {**out, "loss": out["loss"] * float("inf")}
        calls[0] += 1
        return out

    trainer.task.losses = overflow_on_steps_1_and_2
    before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer.fit()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 2, 2]  # logged after steps 2, 4 and 6
    state = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert state["scaler"]["scale"] == 1024.0 / 4  # halved at each overflow, saved for resume
    ema = load_file(latest_checkpoint(tmp_path) / "ema.safetensors")
    assert all(torch.isfinite(v).all() for v in ema.values())
    assert any(not torch.equal(ema[k], before[k]) for k in ema)  # the other 4 steps trained


def test_fp16_without_a_gpu_is_refused_before_anything_is_written(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is allowed")
    proc = run_cli_in_process(
        "train", *QUIET, "trainer.mixed_precision=fp16", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2
    assert "trainer.mixed_precision=fp16 needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("*.safetensors"))


def test_data_loading_workers_give_the_same_training(compose, tmp_path):
    for workers in (0, 2):
        Trainer(
            compose([*QUIET, f"data.num_workers={workers}", f"run_dir={tmp_path / str(workers)}"])
        ).fit()
    a = load_file(latest_checkpoint(tmp_path / "0") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "2") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.cli
def test_a_compiled_model_trains_and_saves_plain_keys(compose, tmp_path):
    Trainer(compose([*QUIET, "trainer.compile=true", f"run_dir={tmp_path / 'c'}"])).fit()
    Trainer(compose([*QUIET, f"run_dir={tmp_path / 'e'}"])).fit()
    for name in ("model.safetensors", "ema.safetensors"):
        compiled = load_file(latest_checkpoint(tmp_path / "c") / name)
        eager = load_file(latest_checkpoint(tmp_path / "e") / name)
        assert compiled.keys() == eager.keys()  # no "_orig_mod." prefix
        for k in eager:  # the same computation, up to the compiler's reordering of float ops
            torch.testing.assert_close(compiled[k], eager[k], rtol=1e-3, atol=1e-4, msg=k)
    run_cli("sample", "run_dir=" + str(tmp_path / "c"), "sampler=ddim", "steps=2",
            "num_samples=2", "progress=false", cwd=tmp_path)  # fmt: skip


def test_the_optimizer_is_fused_unless_a_loss_scaler_drives_it(compose, tmp_path):
    """Fused Adam on the CPU; with fp16 loss scaling the plain one, whose skipped steps
    Accelerate can see (the skip count test above depends on it)."""
    plain = Trainer(compose([*QUIET, f"run_dir={tmp_path / 'a'}"]))
    scaled = ScaledTrainer(compose([*QUIET, f"run_dir={tmp_path / 'b'}"]))
    assert all(g["fused"] for g in plain.optimizer.param_groups)
    assert not any(g["fused"] for g in scaled.optimizer.param_groups)


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_the_fused_optimizer_makes_the_configured_update(compose, kind):
    """build_optimizer passes lr, betas and weight decay through: three steps match torch's
    default implementation built by hand with the same settings, to float rounding."""
    from diffuse_cli.train.optimizer import build_optimizer

    tc = compose([f"trainer.optimizer={kind}", "trainer.weight_decay=0.1", "trainer.lr=0.01",
                  "trainer.betas=[0.8,0.95]"]).trainer  # fmt: skip
    torch.manual_seed(0)
    a = [torch.randn(5, 4, requires_grad=True), torch.randn(7, requires_grad=True)]
    b = [p.detach().clone().requires_grad_() for p in a]
    start = [p.detach().clone() for p in a]
    fused = build_optimizer(a, tc, torch.device("cpu"))
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    reference = cls(b, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, foreach=False)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in a]
        for params, opt in ((a, fused), (b, reference)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert all(not torch.equal(p, s) for p, s in zip(a, start, strict=True))  # they moved


def test_a_resumed_state_keeps_this_runs_implementation():
    """A checkpoint saved by the plain optimizer loads into a fused one (and back) without
    switching it: the moments come from the file, the choice of kernel from this run."""
    from diffuse_cli.train.optimizer import load_optimizer_state

    p = torch.nn.Parameter(torch.randn(6))
    plain = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.randn(6)
    plain.step()
    q = torch.nn.Parameter(p.detach().clone())
    fused = torch.optim.Adam([q], lr=0.1, fused=True)
    load_optimizer_state(fused, plain.state_dict())
    assert fused.param_groups[0]["fused"] is True
    assert torch.equal(fused.state[q]["exp_avg"], plain.state[p]["exp_avg"])
    load_optimizer_state(plain, fused.state_dict())
    assert not plain.param_groups[0]["fused"]


def test_a_resume_applies_the_configs_betas_weight_decay_and_adamw():
    """The saved state brings moments and step counts; the settings are the resuming run's
    (torch's load_state_dict alone keeps the saved ones: a changed weight decay was ignored)."""
    from diffuse_cli.train.optimizer import load_optimizer_state

    p = torch.nn.Parameter(torch.randn(6))
    saved = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.randn(6)
    saved.step()
    q = torch.nn.Parameter(p.detach().clone())
    resumed = torch.optim.AdamW([q], lr=0.1, betas=(0.5, 0.9), weight_decay=0.5)
    load_optimizer_state(resumed, saved.state_dict())
    group = resumed.param_groups[0]
    assert (group["betas"], group["weight_decay"]) == ((0.5, 0.9), 0.5)
    assert group["decoupled_weight_decay"] is True  # AdamW, as configured now
    assert torch.equal(resumed.state[q]["exp_avg"], saved.state[p]["exp_avg"])
