"""Sweeps through Hydra's submitit launcher: `hydra/launcher=slurm` writes the Slurm job that the
README promises (one task per GPU, the pre-emption signal, partition and time from config), and
`hydra/launcher=submitit_local` runs a 2-job sweep, one process per job."""

from __future__ import annotations

import json
import os

import pytest
from conftest import TINY, run_cli
from omegaconf import OmegaConf

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
pytestmark = pytest.mark.cli

SBATCH = """#!/bin/sh
for last; do :; done
cp "$last" "$SBATCH_CAPTURE"
echo "sbatch: error: a stand-in: nothing was submitted" >&2
exit 1
"""


def test_the_slurm_launcher_asks_for_one_task_per_gpu_and_the_requeue_signal(tmp_path):
    bin_dir = tmp_path / "bin"  # stand-ins: submitit looks for srun, then calls sbatch
    bin_dir.mkdir()
    for name, text in (("sbatch", SBATCH), ("srun", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "job.sh"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_CAPTURE": str(script)}
    proc = run_cli("train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                   "hydra.launcher.gpus_per_node=4", "hydra.launcher.timeout_min=90",
                   "schedule=linear,cosine", cwd=tmp_path, env=env, check=False)  # fmt: skip
    assert "a stand-in" in proc.stderr
    lines = set(script.read_text().splitlines())
    for wanted in ("--array=0-1%2", "--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4",
                   "--nodes=1", "--time=90", "--signal=USR2@120"):  # fmt: skip
        assert f"#SBATCH {wanted}" in lines, wanted
    assert "export SUBMITIT_EXECUTOR=slurm" in lines
    assert "export SLURM_KILL_BAD_EXIT=1" in lines  # one failed task ends the others


@pytest.mark.slow
def test_a_two_job_sweep_runs_through_submitit_local(tmp_path):
    run_cli("train", "-m", "hydra/launcher=submitit_local", *TINY, "trainer.max_steps=2",
            "schedule=linear,cosine", cwd=tmp_path)  # fmt: skip
    sweep = tmp_path / "runs" / "default"
    # one run directory per job (named by its overrides, or number-hash when they are this long)
    runs = {OmegaConf.load(c).schedule.name: c.parent for c in sweep.glob("*/config.yaml")}
    assert sorted(runs) == ["cosine", "linear"]
    for run in runs.values():
        assert (run / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["world_size"] == 1
    # each job ran in its own process, which submitit logged in its own folder
    logs = sorted(p.name for p in (sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
