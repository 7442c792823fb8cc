"""Which examples each step trains on, as a pure function of (seed, step).

The order is one random permutation per epoch, and step k takes global positions
[k * B, (k + 1) * B) of the concatenated epochs. Because nothing depends on how many steps ran
before, a resumed run sees exactly the batches an uninterrupted run would. Each process takes a
disjoint slice of the global batch, split further into accumulation micro-batches.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

MAX_MICRO_BATCHES = 1_009  # per optimizer step (trainer.grad_accum)
MAX_PROCESSES = 65_537


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The seed of one micro-batch on one process (its timesteps, noise, dropout and flips).

    Mixed radix, so every (step, micro, rank) of a run gets its own seed for up to
    MAX_MICRO_BATCHES micro-batches and MAX_PROCESSES processes; the radices are odd, so the 32
    low bits that torch's CPU generator keeps of a seed still tell the steps apart.
    """
    if not (0 <= micro < MAX_MICRO_BATCHES and 0 <= rank < MAX_PROCESSES):
        raise ValueError(
            f"micro-batch {micro} / process {rank}: at most {MAX_MICRO_BATCHES} micro-batches "
            f"and {MAX_PROCESSES} processes have seeds of their own"
        )
    return (((seed * 1_000_003 + step) * MAX_MICRO_BATCHES + micro) * MAX_PROCESSES + rank) % 2**64


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=g)


def global_batch(num_examples: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the global batch of `step` (length batch_size)."""
    start = step * batch_size
    out, filled = [], 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, num_examples)
        take = min(batch_size - filled, num_examples - offset)
        out.append(epoch_permutation(num_examples, seed, epoch)[offset : offset + take])
        filled += take
    return torch.cat(out)


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's micro-batches for steps start_step, start_step + 1, ..."""

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        start_step: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ):
        if num_examples <= 0:
            raise ValueError("the training data set is empty (check data.num_train and the files)")
        per_process, rem = divmod(batch_size, world_size * grad_accum)
        if rem or per_process == 0:
            raise ValueError(
                f"trainer.batch_size={batch_size} must be a positive multiple of "
                f"processes x trainer.grad_accum = {world_size * grad_accum}"
            )
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.grad_accum, self.micro = grad_accum, per_process

    def __iter__(self):
        step = self.start_step
        while True:
            batch = global_batch(self.num_examples, self.batch_size, self.seed, step)
            mine = batch.view(self.world_size, -1)[self.rank]
            yield from (m.tolist() for m in mine.split(self.micro))
            step += 1
