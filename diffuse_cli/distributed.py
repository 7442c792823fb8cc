"""Several processes: how a command joins them, refuses to run alone by mistake, and leaves.

A launcher (`accelerate launch`, `torchrun`, Slurm through submitit) starts N copies of
`diffuse`. Each command joins one process group through Accelerate, on the CPU (gloo) when there
is no GPU, and the CLI leaves it once, after the last Hydra job: every process waits for the
others, the group is destroyed, and the process ends without running C++ static destructors, so a
finished run cannot abort at interpreter exit (gloo's threads are known to do that now and then).
Leaving once, not per job, keeps a sweep (`-m`) under a launcher working: its jobs share the group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import torch

from diffuse_cli.errors import UserError


def launched_world_size() -> int:
    """The number of processes the launcher started (WORLD_SIZE), 1 without a launcher."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def under_submitit() -> bool:
    """Inside a job that Hydra's submitit launcher started (local or Slurm)."""
    return "SUBMITIT_EXECUTOR" in os.environ


def export_slurm_environment() -> bool:
    """Under Slurm through submitit with several tasks (one per GPU), export MASTER_ADDR,
    MASTER_PORT, RANK, WORLD_SIZE and LOCAL_RANK for Accelerate, which reads them; True if it
    did. Every task of the job runs the same Hydra job; without this they would be N copies."""
    if "WORLD_SIZE" in os.environ or not under_submitit():
        return False
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return False
    if JobEnvironment().num_tasks <= 1:
        return False
    # each task sees the node's GPUs; Accelerate picks cuda:LOCAL_RANK
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def check_joined(num_processes: int) -> None:
    """Refuse to run as one of N processes that do not know of each other: each would train,
    sample or evaluate alone and overwrite the others' files."""
    launched = launched_world_size()
    if launched > 1 and num_processes != launched:
        raise UserError(
            f"this is one of {launched} processes (WORLD_SIZE={launched}), but it runs alone "
            f"(Accelerate sees {num_processes} process): the {launched} processes would each "
            "do the whole job and overwrite each other's files. Launch with `accelerate launch "
            "--multi_gpu` (on a machine without GPUs too), or set ACCELERATE_USE_CPU=1 when "
            "another launcher starts CPU processes"
        )


def process_state():
    """Accelerate's PartialState, in the launcher's process group (on the CPU without a GPU:
    a plain state would run every process alone there), checked by `check_joined`."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    check_joined(state.num_processes)
    return state


def shard(num: int, rank: int, world: int) -> range:
    """Process `rank`'s contiguous share of items 0..num-1: disjoint, together exactly all."""
    return range(rank * num // world, (rank + 1) * num // world)


def gather_exact(mine: dict, num: int) -> dict | None:
    """Every process's share ({"index": [n], ...: [n, ...]} tensors), concatenated in index
    order on the main process (None on the others: only the main process writes, and a copy of
    every sample on every process would multiply the memory by the process count); checks
    that each of items 0..num-1 is there exactly once."""
    if not in_process_group():
        received = [mine]
    else:
        main = torch.distributed.get_rank() == 0
        received = [None] * torch.distributed.get_world_size() if main else None
        torch.distributed.gather_object(mine, received, dst=0)
        if not main:
            return None
    shares = [s for s in received if s and len(s["index"])]
    result = {k: torch.cat([s[k] for s in shares]) for k in shares[0]}
    order = result["index"].argsort()
    result = {k: v[order] for k, v in result.items()}
    if not torch.equal(result["index"], torch.arange(num)):
        raise RuntimeError(f"gathered {len(result['index'])} items, expected 0..{num - 1} once")
    return result


def broadcast_from_main(value):
    """The main process's `value` (picklable), on every process: one decision for all."""
    if not in_process_group():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_agree(value) -> bool:
    """Whether every process holds the same `value` (picklable); the same answer on every
    process, so all of them can stop together instead of one alone."""
    if not in_process_group():
        return True
    held = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(held, value)  # objects: any backend, NCCL's too
    return all(v == held[0] for v in held)


@contextlib.contextmanager
def main_process_first():
    """A block the main process runs first and the others after it (a download into a shared
    folder); an ordinary block outside a process group."""
    grouped = in_process_group()
    main = not grouped or torch.distributed.get_rank() == 0
    if not main:
        torch.distributed.barrier()
    yield
    if grouped and main:
        torch.distributed.barrier()


def in_process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def teardown(ok: bool) -> None:
    """Leave the process group: wait for the others (only after success: a failed process must
    not wait for peers that may be waiting for it), then destroy the group."""
    if in_process_group():
        if ok:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def leave(exit_code: int) -> None:
    """End a process of a group: tear the group down, flush, and exit at once."""
    teardown(exit_code == 0)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(exit_code)
