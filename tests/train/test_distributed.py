"""Joining a launcher's processes: shares of the work, the refusal to run as N unaware copies,
and the torch.distributed environment of a multi-task Slurm job (submitit)."""

from __future__ import annotations

import os

import pytest
import torch

from diffuse_cli import distributed
from diffuse_cli.errors import UserError


@pytest.mark.parametrize("num", [0, 1, 2, 7, 8, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_are_disjoint_contiguous_and_cover_every_item(num, world):
    shares = [distributed.shard(num, rank, world) for rank in range(world)]
    assert [i for s in shares for i in s] == list(range(num))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_of_several_launched_processes_that_runs_alone_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="one of 2 processes.*runs alone.*accelerate launch"):
        distributed.check_joined(1)
    distributed.check_joined(2)  # joined: fine
    monkeypatch.delenv("WORLD_SIZE")
    distributed.check_joined(1)  # no launcher: fine


SLURM_TASK = {  # task 3 of 4, two nodes with two GPUs each
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "4",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "CUDA_VISIBLE_DEVICES": "0,1",
}
TORCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def slurm_task(monkeypatch):
    pytest.importorskip("submitit")
    for key in TORCH_ENV:  # recorded as absent, so what the export sets is removed afterwards
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    for key, value in SLURM_TASK.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_a_multi_task_slurm_job_exports_the_torch_distributed_environment(slurm_task):
    assert distributed.export_slurm_environment()
    env = {k: os.environ[k] for k in TORCH_ENV}
    assert env["MASTER_ADDR"] == "gpu07"  # the job's first node, the same for every task
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")
    assert env["LOCAL_WORLD_SIZE"] == "2" and 1024 < int(env["MASTER_PORT"]) < 65536
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # Accelerate picks cuda:LOCAL_RANK


def test_single_task_jobs_and_launched_processes_are_left_alone(slurm_task):
    slurm_task.setenv("SLURM_NTASKS", "1")
    assert not distributed.export_slurm_environment()
    slurm_task.setenv("SLURM_NTASKS", "4")
    slurm_task.setenv("WORLD_SIZE", "8")  # a launcher already said
    assert not distributed.export_slurm_environment()
    assert "RANK" not in os.environ
    slurm_task.delenv("WORLD_SIZE")
    slurm_task.delenv("SUBMITIT_EXECUTOR")  # not a submitit job
    assert not distributed.export_slurm_environment()


def _in_a_group_of_two(rank: int, init_file: str, out: str) -> None:
    """Rank `rank` of a 2-process gloo group: gathers 5 items, logs its turn in a block the
    main process runs first, and asks all_agree of a value equal and one unequal on both."""
    import json
    import time

    import torch

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    try:
        mine = distributed.shard(5, rank, 2)
        share = {"index": torch.tensor(list(mine)), "x": 10 * torch.tensor(list(mine))}
        got = distributed.gather_exact(share, 5)
        with distributed.main_process_first():
            if rank == 0:
                time.sleep(0.5)  # the other process must still wait for this one
            with open(f"{out}/order", "a") as fh:
                fh.write(f"{rank}\n")
        result = None if got is None else {k: v.tolist() for k, v in got.items()}
        agree = [distributed.all_agree("same"), distributed.all_agree(f"rank {rank}")]
        with open(f"{out}/rank{rank}.json", "w") as fh:
            json.dump({"gathered": result, "agree": agree}, fh)
    finally:
        torch.distributed.destroy_process_group()


def test_gathering_main_first_and_agreement_in_a_group_of_two(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_in_a_group_of_two, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    main, other = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert main["gathered"] == {"index": [0, 1, 2, 3, 4], "x": [0, 10, 20, 30, 40]}
    assert other["gathered"] is None  # no copy on the others
    assert (tmp_path / "order").read_text().split() == ["0", "1"]
    assert main["agree"] == other["agree"] == [True, False]  # one answer on every process


def test_gathering_checks_that_every_item_is_there_exactly_once():
    """Shares are put in index order (every key alike); a missing or repeated index (shards
    that do not partition the items) is an error, not a short or padded result."""
    got = distributed.gather_exact(
        {"index": torch.tensor([2, 0, 1]), "x": torch.tensor([20, 0, 10])}, 3
    )
    assert got["index"].tolist() == [0, 1, 2] and got["x"].tolist() == [0, 10, 20]
    for index in ([0, 2], [0, 1, 1, 2], [0, 1, 1], [1, 2, 3]):
        share = {"index": torch.tensor(index), "x": torch.zeros(len(index))}
        with pytest.raises(RuntimeError, match="expected 0..2 once"):
            distributed.gather_exact(share, 3)


def test_a_download_runs_in_the_main_process_first_block(compose, monkeypatch):
    import contextlib

    from diffuse_cli import build

    entered = []

    @contextlib.contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(distributed, "main_process_first", recording)
    build.build_data(compose(["data.download=false"]), "test", every_process=True)
    assert entered == []
    build.build_data(compose(["data.download=true"]), "test", every_process=True)  # shapes
    assert entered == [True]
    build.build_data(compose(["data.download=true"]), "test")  # one process alone (eval loss)
    assert entered == [True]  # must not wait for processes that never come
