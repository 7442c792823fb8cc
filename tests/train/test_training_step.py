"""What one optimizer step does to the weights: gradient clipping and the EMA update."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY

from diffuse_cli.train.ema import EMA
from diffuse_cli.train.trainer import Trainer


def test_ema_update_is_decay_times_the_average_plus_the_rest_times_the_weights():
    model = torch.nn.Linear(3, 2)
    model.register_buffer("count", torch.tensor(1.0))
    theta0 = [p.detach().clone() for p in model.parameters()]
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.count.fill_(5.0)
    ema.update(model)
    for shadow, before, now in zip(ema.model.parameters(), theta0, model.parameters(), strict=True):
        torch.testing.assert_close(shadow, 0.9 * before + 0.1 * now, rtol=0, atol=1e-6)
    assert ema.model.count.item() == 5.0  # buffers are copied, not averaged
    ema.update(model)  # twice: the shadow moves a tenth of the remaining gap again
    for shadow, before, now in zip(ema.model.parameters(), theta0, model.parameters(), strict=True):
        torch.testing.assert_close(shadow, 0.81 * before + 0.19 * now, rtol=0, atol=1e-6)


def record_gradient_norms(trainer: Trainer) -> list[float]:
    """The global gradient norm each time the optimizer steps."""
    norms, step = [], trainer.optimizer.step

    def recording(*args, **kwargs):
        grads = [p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.cat(grads)).item())
        return step(*args, **kwargs)

    trainer.optimizer.step = recording
    return norms


@pytest.mark.parametrize("clip", [0.01, 0.0])
def test_the_step_sees_gradients_clipped_to_grad_clip_and_the_log_the_norm_before(
    compose, tmp_path, clip
):
    run = tmp_path / "run"
    cfg = compose([*TINY, "trainer.max_steps=3", f"trainer.grad_clip={clip}",
                   "trainer.log_every=1", "trainer.sample_every=1000",
                   f"run_dir={run}"])  # fmt: skip
    trainer = Trainer(cfg)
    norms = record_gradient_norms(trainer)
    trainer.fit()
    logged = [
        json.loads(line)["grad_norm"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(norms) == len(logged) == 3
    if clip:
        assert all(g > 10 * clip for g in logged)  # so clipping had work to do
        assert norms == pytest.approx([clip] * 3, rel=1e-4)
    else:  # 0: no clipping
        assert norms == pytest.approx(logged, rel=1e-5)


def test_the_step_flips_each_micro_batch_with_its_own_seed(compose, tmp_path, monkeypatch):
    """With data.hflip=true the network trains on random_hflip(x) drawn from a generator
    seeded by step_seed(seed, step, micro, process), so a resumed run flips alike."""
    from diffuse_cli.data import random_hflip
    from diffuse_cli.train.batches import step_seed

    cfg = compose([*TINY, "data.hflip=true", "seed=5", "trainer.grad_accum=2",
                   f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    trainer = Trainer(cfg)
    seen, losses = [], trainer.task.losses

    def recording(model, x, y, t):
        seen.append(x.clone())
        return losses(model, x, y, t)

    monkeypatch.setattr(trainer.task, "losses", recording)
    data = [(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    trainer.train_step(3, iter(data))
    assert len(seen) == 2
    for micro, ((x, _), got) in enumerate(zip(data, seen, strict=True)):
        g = torch.Generator().manual_seed(step_seed(5, 3, micro, 0))
        assert torch.equal(got, random_hflip(x, g))
    flipped = [not torch.equal(a, b) for (x, _), got in zip(data, seen, strict=True)
               for a, b in zip(x, got, strict=True)]  # fmt: skip
    assert any(flipped) and not all(flipped)
