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


@pytest.mark.parametrize("damage", ["truncated weights", "empty state.json"])
def test_a_damaged_checkpoint_is_refused_with_what_to_do(tmp_path, damage):
    from diffuse_cli.train.checkpoint import load_weights

    folder = save(tmp_path, 1)
    if damage == "truncated weights":
        (folder / "ema.safetensors").write_bytes((folder / "ema.safetensors").read_bytes()[:20])
    else:
        (folder / "state.json").write_text("")
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(2, 2))
    for read in (lambda: read_checkpoint(folder), lambda: load_weights(model, tmp_path)):
        with pytest.raises(UserError, match="it is damaged: move it out of") as err:
            read()
        assert str(folder) in str(err.value)


def test_checkpoints_past_10_to_the_8_steps_keep_their_order(tmp_path):
    """Step names outgrow 8 digits: step_100000000 sorts before step_99999999 as a string."""
    for step in (99_999_999, 100_000_000):
        save(tmp_path, step, keep_last=1)
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.glob("step_*")] == ["step_100000000"]
    save(tmp_path, 100_000_001, keep_last=3)
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step_100000001"


def test_checkpoint_files_get_the_permissions_of_plain_files(tmp_path):
    """safetensors writes 0600 whatever the umask; a group sharing the run folder must read
    the weights like the other files."""
    folder = save(tmp_path, 1)
    modes = {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()}
    assert len(set(modes.values())) == 1, modes
    assert modes["model.safetensors"] == (folder / "state.json").stat().st_mode & 0o777


def test_a_crash_while_resaving_a_step_keeps_that_step(tmp_path):
    """The window in a re-save between moving the old copy aside and renaming the new one."""
    save(tmp_path, 1)
    save(tmp_path, 2, value=2.0)
    root = tmp_path / "checkpoints"
    (root / "step_00000002").rename(root / ".old-step_00000002")  # as the crash leaves it
    found = latest_checkpoint(tmp_path)
    assert read_checkpoint(found)["model"]["w"][0, 0] == 2.0  # not step 1
    save(tmp_path, 3, keep_last=0)  # the next save puts it back
    assert sorted(p.name for p in root.iterdir() if "step" in p.name) == [
        "step_00000001",
        "step_00000002",
        "step_00000003",
    ]


def test_a_leftover_old_copy_is_dropped_when_its_step_is_complete(tmp_path):
    save(tmp_path, 1, value=1.0)
    root = tmp_path / "checkpoints"
    (root / ".old-step_00000001").mkdir()
    save(tmp_path, 2)
    assert not (root / ".old-step_00000001").exists()
    assert read_checkpoint(root / "step_00000001")["model"]["w"][0, 0] == 1.0


def test_a_step_asked_for_is_found_in_its_moved_aside_copy(tmp_path):
    from diffuse_cli.train.checkpoint import chosen_checkpoint

    save(tmp_path, 1)
    save(tmp_path, 2)
    root = tmp_path / "checkpoints"
    (root / "step_00000001").rename(root / ".old-step_00000001")  # a crash in its re-save
    assert chosen_checkpoint(tmp_path, 1) == root / ".old-step_00000001"
    with pytest.raises(UserError, match="no checkpoint of step 3; it has steps 2"):
        chosen_checkpoint(tmp_path, 3)


def test_a_checkpoint_pruned_while_it_is_read_is_not_called_damaged(tmp_path, monkeypatch):
    """sample/eval beside a training run: keep_last may remove the chosen checkpoint before
    its files are read; the folder is gone, not damaged."""
    import shutil

    from diffuse_cli.train import checkpoint

    folder = save(tmp_path, 1)
    real = checkpoint.load_safetensors

    def pruned_meanwhile(data):
        shutil.rmtree(folder)
        return real(data)

    monkeypatch.setattr(checkpoint, "load_safetensors", pruned_meanwhile)
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(2, 2))
    with pytest.raises(UserError, match="was removed while it was read") as err:
        checkpoint.load_weights(model, tmp_path)
    assert "damaged" not in str(err.value)
