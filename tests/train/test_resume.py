"""Exact resume: k steps + resume + k steps gives the weights of 2k steps straight."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file

from diffuse_cli.train.checkpoint import latest_checkpoint
from diffuse_cli.train.trainer import train


def final_weights(run_dir):
    folder = latest_checkpoint(run_dir)
    return load_file(folder / "model.safetensors"), load_file(folder / "ema.safetensors")


@pytest.mark.cuda
def test_resume_reproduces_an_uninterrupted_run(compose, tmp_path):
    common = [
        *TINY,
        "trainer.ckpt_every=3",
        "trainer.sample_every=100",
        "model.dropout=0.1",
        "data.hflip=true",
        "trainer.grad_accum=2",
        "trainer.lr_decay=cosine",  # a function of the step: the resumed half continues it
        "trainer.lr_decay_steps=6",
    ]
    straight = compose([*common, "trainer.max_steps=6", f"run_dir={tmp_path / 'a'}"])
    train(straight)
    first = compose([*common, "trainer.max_steps=3", f"run_dir={tmp_path / 'b'}"])
    train(first)
    second = compose([*common, "trainer.max_steps=6", f"run_dir={tmp_path / 'b'}"])
    train(second)
    (wa, ea), (wb, eb) = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(ea[k], eb[k], rtol=0, atol=0, msg=k)
    # and training moved the weights at all
    init = compose([*common, "trainer.max_steps=1", f"run_dir={tmp_path / 'c'}"])
    train(init)
    wc, _ = final_weights(tmp_path / "c")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.cuda
def test_resume_with_importance_sampled_timesteps_is_exact(compose, tmp_path):
    """The importance sampler's history is saved with the checkpoint; with T = 2 it is warmed
    up (ten losses at each t) before the interruption, so the resumed half draws t from it."""
    common = [
        *TINY,
        "loss=hybrid",
        "loss.timesteps=importance",
        "variance=learned_range",
        "schedule.num_timesteps=2",
        "schedule.scale_betas=false",  # 1000/T would take beta_T past 1
        "trainer.ckpt_every=4",
        "trainer.sample_every=100",
        "trainer.grad_accum=2",
    ]
    train(compose([*common, "trainer.max_steps=8", f"run_dir={tmp_path / 'a'}"]))
    train(compose([*common, "trainer.max_steps=4", f"run_dir={tmp_path / 'b'}"]))
    history = load_file(latest_checkpoint(tmp_path / "b") / "timesteps.safetensors")
    assert history["loss_counts"].tolist() == [10, 10]  # warmed up at the interruption
    train(compose([*common, "trainer.max_steps=8", f"run_dir={tmp_path / 'b'}"]))
    (wa, ea), (wb, eb) = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(ea[k], eb[k], rtol=0, atol=0, msg=k)
    ha, hb = (load_file(latest_checkpoint(tmp_path / r) / "timesteps.safetensors") for r in "ab")
    assert torch.equal(ha["loss_history"], hb["loss_history"])
    assert torch.equal(ha["loss_counts"], hb["loss_counts"])


def test_a_resume_needs_only_trainer_overrides(compose, tmp_path):
    """`diffuse train run_dir=R trainer.max_steps=4` continues R with its own model, schedule,
    data and loss (here other than the defaults); naming one of them differently is refused."""
    from omegaconf import OmegaConf

    from diffuse_cli.errors import UserError
    from diffuse_cli.runs import read_run_config
    from diffuse_cli.train.validate import resumed_config

    run = tmp_path / "r"
    own = [*TINY, "schedule=cosine", "model.num_res_blocks=2", "loss=hybrid",
           "variance=learned_range", "trainer.max_steps=2", "trainer.sample_num=0"]  # fmt: skip
    train(compose([*own, f"run_dir={run}"]))
    command_line = [f"run_dir={run}", "trainer.max_steps=3", "trainer.progress=false",
                    "trainer.sample_num=0", "data.num_workers=0"]  # fmt: skip
    cfg = resumed_config(compose(command_line), run, command_line)
    saved = read_run_config(run)
    for group in ("model", "schedule", "variance", "loss", "data"):
        assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(saved[group]), group
    train(cfg)
    assert latest_checkpoint(run).name == "step_00000003"
    refusal = r"schedule.name='linear' \(run: 'cosine'\), .* other schedule settings; refusing"
    with pytest.raises(UserError, match=refusal):
        resumed_config(compose([*command_line, "schedule=linear"]), run, ["schedule=linear"])
