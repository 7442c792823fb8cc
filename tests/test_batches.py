"""The batch order is a pure function of (seed, step), split across processes."""

from __future__ import annotations

import itertools

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
