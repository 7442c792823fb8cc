"""The batch order is a pure function of (seed, step), split across processes."""

from __future__ import annotations

import itertools

import pytest
import torch

from diffuse_cli.train.batches import StepBatchSampler, global_batch


def test_each_epoch_visits_every_example_once():
    seen = torch.cat([global_batch(10, 5, seed=0, step=s) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))


def test_batches_straddle_epochs():
    b = global_batch(10, 4, seed=1, step=2)  # positions 8..11: two of epoch 0, two of epoch 1
    assert len(b) == 4 and len(set(b[:2].tolist()) & set(b[2:].tolist())) <= 2


def test_starting_later_gives_the_same_batches():
    full = list(itertools.islice(iter(StepBatchSampler(50, 8, 0, start_step=0)), 10))
    late = list(itertools.islice(iter(StepBatchSampler(50, 8, 0, start_step=4)), 6))
    assert full[4:] == late


def test_processes_and_micro_batches_partition_the_global_batch():
    parts = []
    for rank in range(2):
        it = iter(StepBatchSampler(40, 8, 3, 0, rank=rank, world_size=2, grad_accum=2))
        parts += [next(it), next(it)]
    assert all(len(p) == 2 for p in parts)
    assert sorted(sum(parts, [])) == sorted(global_batch(40, 8, 3, 0).tolist())


def test_every_micro_batch_of_every_process_gets_its_own_seed():
    """Distinct in the 32 low bits torch's CPU generator keeps, also past 101 processes (a
    radix of 101 once gave process 101 the seed of the next micro-batch on process 0)."""
    from diffuse_cli.train.batches import step_seed

    seeds = {
        step_seed(7, step, micro, rank) % 2**32
        for step in range(40)
        for micro in range(3)
        for rank in (*range(0, 130), 1000, 65_536)
    }
    assert len(seeds) == 40 * 3 * 132
    assert step_seed(7, 5, 0, 101) != step_seed(7, 5, 1, 0)
    assert 0 <= step_seed(-3, 10**9, 2, 4) < 2**64  # a valid torch seed for any run seed
    with pytest.raises(ValueError, match="processes have seeds"):
        step_seed(0, 0, 0, 65_537)


def test_too_many_micro_batches_are_refused(compose):
    from diffuse_cli.errors import UserError
    from diffuse_cli.train.validate import validate_train_config

    with pytest.raises(UserError, match="grad_accum=2000 must be <= 1009"):
        validate_train_config(compose(["trainer.grad_accum=2000"]))


@pytest.mark.parametrize("key", ["warmup_steps", "keep_last", "weight_decay", "grad_clip"])
def test_negative_trainer_settings_are_refused(compose, key):
    """They used to act as 0 (no warmup, keep all, no decay, no clipping) without a word."""
    from diffuse_cli.errors import UserError
    from diffuse_cli.train.validate import validate_train_config

    with pytest.raises(UserError, match=rf"trainer.{key}=-1(\.0)? must be >= 0"):
        validate_train_config(compose([f"trainer.{key}=-1"]))


def test_an_empty_data_set_is_refused():
    with pytest.raises(ValueError, match="the training data set is empty"):
        StepBatchSampler(0, 8, seed=0, start_step=0)


def test_every_epoch_is_its_own_permutation_and_the_seed_picks_the_order():
    """Each epoch shuffles anew (an epoch seed without the epoch would repeat one order), and
    the run's data seed changes the batches (a seed left out would give every run one order)."""
    n = 20
    epochs = [torch.cat([global_batch(n, 5, seed=3, step=4 * e + s) for s in range(4)])
              for e in range(3)]  # fmt: skip
    for order in epochs:
        assert sorted(order.tolist()) == list(range(n))
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert not torch.equal(global_batch(n, 5, seed=0, step=0), global_batch(n, 5, seed=1, step=0))
    first = [next(iter(StepBatchSampler(n, 5, seed, start_step=0))) for seed in (0, 1)]
    assert first[0] != first[1]
