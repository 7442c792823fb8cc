"""Checkpoint files: atomic writes, the latest pointer, pruning and safe loading."""

from __future__ import annotations

import json

import pytest
import torch

from diffuse_cli.errors import UserError
from diffuse_cli.train.checkpoint import (
    latest_checkpoint,
    load_state_checked,
    read_checkpoint,
    save_checkpoint,
)


def save(run, step, keep_last=2, value=0.0):
    w = {"w": torch.full((2, 2), value)}
    opt = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return save_checkpoint(run, step, w, w, opt, {"note": "x"}, keep_last=keep_last)


def test_latest_points_at_the_newest_and_old_ones_are_pruned(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, value=step)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000002", "step_00000003"]
    folder = latest_checkpoint(tmp_path)
    ckpt = read_checkpoint(folder)
    assert ckpt["state"]["step"] == 3 and ckpt["model"]["w"][0, 0] == 3
    assert not list(root.glob(".tmp-*"))


def test_an_interrupted_save_leaves_latest_on_the_complete_one(tmp_path):
    save(tmp_path, 1)
    broken = tmp_path / "checkpoints" / ".tmp-step_00000002"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"half a file")
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    save(tmp_path, 2)  # the next save clears the leftover
    assert latest_checkpoint(tmp_path).name == "step_00000002" and not broken.exists()


def test_missing_pointer_falls_back_to_newest_complete_folder(tmp_path):
    save(tmp_path, 1)
    save(tmp_path, 2)
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_00000002"


def test_resaving_a_step_replaces_it(tmp_path):
    save(tmp_path, 1, value=1.0)
    save(tmp_path, 1, value=5.0)
    assert read_checkpoint(latest_checkpoint(tmp_path))["model"]["w"][0, 0] == 5.0


def test_state_is_plain_json(tmp_path):
    folder = save(tmp_path, 7)
    assert json.loads((folder / "state.json").read_text()) == {"step": 7, "note": "x"}


def test_pickled_code_in_the_optimizer_file_is_refused(tmp_path):
    folder = save(tmp_path, 1)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, folder / "optimizer.pt")
    with pytest.raises(UserError, match="refused unread"):
        read_checkpoint(folder)
    assert not marker.exists()


def test_mismatched_state_names_the_keys():
    model = torch.nn.Linear(2, 3)
    with pytest.raises(UserError, match=r"missing: bias.*different shape: weight"):
        load_state_checked(model, {"weight": torch.zeros(4, 2)}, "checkpoint 'x'")
