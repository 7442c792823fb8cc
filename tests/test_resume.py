"""Exact resume: k steps + resume + k steps gives the weights of 2k steps straight."""

from __future__ import annotations

import torch
from conftest import TINY
from safetensors.torch import load_file

from diffuse_cli.train.checkpoint import latest_checkpoint
from diffuse_cli.train.trainer import train


def final_weights(run_dir):
    folder = latest_checkpoint(run_dir)
    return load_file(folder / "model.safetensors"), load_file(folder / "ema.safetensors")


def test_resume_reproduces_an_uninterrupted_run(compose, tmp_path):
    common = [
        *TINY,
        "trainer.ckpt_every=3",
        "trainer.sample_every=100",
        "model.dropout=0.1",
        "data.hflip=true",
        "trainer.grad_accum=2",
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
