"""The GPU check's plumbing: stages in their own processes with their own limits, a report
rewritten after every stage, and the whole check end to end on the CPU (slow)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import device_overrides

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


runner = load_script("stage_runner")


def python(code: str) -> list[str]:
    """A trivial stage: a Python one-liner that may report figures through StageFigures."""
    prelude = f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); from stage_runner import *; "
    return [sys.executable, "-c", prelude + code]


def run(tmp_path: Path, *stages):
    return runner.run_stages(
        list(stages), tmp_path / "out", "check", "Check", {"device": "cpu"}, tmp_path / "work"
    )


def test_statuses_reasons_and_figures_of_each_kind_of_stage(tmp_path):
    results = run(
        tmp_path,
        runner.Stage("fine", 30, python("StageFigures().record(img_per_s=12.5)")),
        runner.Stage("crashes", 30, python("print('warming up'); raise RuntimeError('boom')")),
        runner.Stage(
            "hangs", 2, python("f = StageFigures(); f.record(done=1); import time; time.sleep(60)")
        ),
        runner.Stage("not_here", 30, python("StageFigures().skip('needs CUDA')")),
        runner.Stage("never_run", 30, ["false"], skip="--no-install"),
    )
    by_name = {r["name"]: r for r in results}
    assert [r["name"] for r in results] == ["fine", "crashes", "hangs", "not_here", "never_run"]
    assert by_name["fine"]["status"] == "ok" and by_name["fine"]["figures"] == {"img_per_s": 12.5}
    assert "output_tail" not in by_name["fine"] and "reason" not in by_name["fine"]
    crashed = by_name["crashes"]
    assert crashed["status"] == "failed"
    assert crashed["reason"].startswith("exit status 1: RuntimeError: boom")
    assert "warming up" in crashed["output_tail"] and "Traceback" in crashed["output_tail"]
    hung = by_name["hangs"]
    assert hung["status"] == "skipped" and "time limit of 2 s" in hung["reason"]
    assert hung["figures"] == {"done": 1} and 2 <= hung["seconds"] < 30  # killed, kept figures
    assert by_name["not_here"]["status"] == "skipped"
    assert by_name["not_here"]["reason"] == "needs CUDA"
    assert by_name["never_run"]["status"] == "skipped"
    assert by_name["never_run"]["reason"] == "--no-install"


def test_a_timeout_kills_the_stages_children_too(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    (result,) = run(tmp_path, runner.Stage("parent", 4, [sys.executable, "-c", child]))
    assert result["status"] == "skipped"
    state = Path(f"/proc/{int(pid_file.read_text())}/stat")
    deadline = time.monotonic() + 5
    while running(state):
        assert time.monotonic() < deadline, "the stage's child outlived the stage"
        time.sleep(0.1)


def running(stat: Path) -> bool:
    """Whether /proc/<pid>/stat shows a process that has not exited (not a zombie)."""
    try:
        return stat.read_text().split()[2] not in "ZX"
    except FileNotFoundError:
        return False


def test_the_report_is_on_disk_after_every_stage(tmp_path):
    """The second stage reads the JSON and Markdown the first one left: a run killed after
    any stage keeps the results of the stages before it."""
    out = tmp_path / "out"
    read_back = (
        f"import json, pathlib; out = pathlib.Path({str(out)!r}); "
        "r = json.loads((out / 'check.json').read_text()); "
        "md = (out / 'check.md').read_text(); "
        "StageFigures().record(seen=[s['name'] for s in r['stages']], md='| first | ok |' in md)"
    )
    results = run(
        tmp_path,
        runner.Stage("first", 30, python("StageFigures().record(x=1)")),
        runner.Stage("second", 30, python(read_back)),
    )
    assert results[1]["figures"] == {"seen": ["first"], "md": True}
    report = json.loads((out / "check.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["first", "second"]
    assert report["header"] == {"device": "cpu"}
    log = (out / "check.log").read_text()
    assert "===== first: ok" in log and "===== second: ok" in log


def test_the_markdown_shows_each_stage_and_its_figures():
    results = [
        {
            "name": "bench",
            "status": "ok",
            "seconds": 3.0,
            "limit_s": 120,
            "figures": {"train_ratio": 1.3, "target": "pass (1.3 against 1.25)"},
        },
        {
            "name": "fid",
            "status": "failed",
            "seconds": 1.0,
            "limit_s": 40,
            "figures": {},
            "reason": "exit status 2: a | b",
        },
    ]
    md = runner.markdown("GPU check", {"device": "cuda"}, results)
    assert "- device: cuda" in md
    assert "| bench | ok | 3.0 | 120 |  |" in md
    assert "| fid | failed | 1.0 | 40 | exit status 2: a \\| b |" in md
    assert "## bench" in md and "- train_ratio: 1.3" in md and "## fid" not in md


def test_the_device_switch_gives_sample_and_eval_a_device(monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "TEST_DEVICE", "cuda")
    assert device_overrides(("sample", "steps=2")) == ["device=cuda"]
    assert device_overrides(("eval", "-m", "metrics=[fid]")) == ["device=cuda"]
    assert device_overrides(("sample", "device=cpu")) == []  # a test's own choice stands
    assert device_overrides(("train", "trainer.max_steps=2")) == []  # Accelerate picks the GPU
    monkeypatch.setattr(conftest, "TEST_DEVICE", "")
    assert device_overrides(("sample", "steps=2")) == []


def test_gpu_check_knows_the_peaks_and_keeps_its_budget():
    check = load_script("gpu_check")
    assert check.bf16_peak("NVIDIA H100 80GB HBM3") == 989.4
    assert check.bf16_peak("NVIDIA H100 PCIe") == 756.0
    assert check.bf16_peak("NVIDIA H200") == 989.4
    assert check.bf16_peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert check.bf16_peak("NVIDIA L40S") == 362.0 and check.bf16_peak("NVIDIA L4") == 121.0
    assert check.bf16_peak("Tesla V100-SXM2-16GB") == "unknown"
    assert sum(full for full, _ in check.LIMITS.values()) <= 8 * 60
    assert check.pass_fail(1.31, 1.25) == "pass (1.31 against 1.25)"
    assert check.pass_fail(7000.0, 8000.0) == "fail (7e+03 against 8000)"


@pytest.mark.slow
def test_the_whole_check_runs_on_the_cpu(tmp_path):
    """Every stage end to end with --device cpu --quick; the ones that need CUDA say so."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(SCRIPTS / "gpu_check.py"),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quick",
        "--no-install",
        "--work",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert list(status) == list(load_script("gpu_check").STAGES)
    needs_cuda = {"install", "cuda_tests", "train_fp16", "resume_fp16_as_bf16"}
    assert {name for name, s in status.items() if s == "skipped"} == needs_cuda, report
    assert all(s == "ok" for name, s in status.items() if name not in needs_cuda), report
    figures = {s["name"]: s["figures"] for s in report["stages"]}
    assert figures["environment"]["device"] == "cpu"
    assert figures["train_fp32"]["steps"] == 4 and figures["train_bf16"]["final_loss"] > 0
    assert figures["resume_exact"]["no_exact"] is True
    assert figures["bench"]["train_gflop_per_image_measured"] > 0
    assert figures["bench"]["target_train_ratio_1.25"].startswith(("pass", "fail"))
    assert figures["accelerate_launch"]["world_size"] == 1
    assert figures["fid"]["extractor"] in ("builtin", "inception")
    assert figures["fid"]["value"] is not None and figures["fid"]["num_samples"] == 64
    md = (out / "gpu_check.md").read_text()
    assert all(f"| {name} | {s} |" in md for name, s in status.items())


def test_the_install_stage_names_the_requirements_still_missing(monkeypatch):
    from importlib import metadata

    check = load_script("gpu_check")

    class Project:
        requires = [
            "torch>=2.4",
            "no-such-package-a>=1",
            'no-such-package-b; extra == "bench"',
            'no-such-package-c>=2; extra == "cluster"',
            'pytest>=8; extra == "dev"',
        ]

    installed = metadata.distribution
    monkeypatch.setattr(
        metadata, "distribution", lambda name: Project() if name == "diffuse" else installed(name)
    )
    # the cluster extra is not the check's; installed ones (torch, pytest) are not missing
    assert check.missing_requirements() == ["no-such-package-a", "no-such-package-b"]


@pytest.mark.slow
def test_bench_counts_the_backward_pass_and_the_adam_state():
    """A training step is the forward pass and a backward pass of about twice its FLOPs (the
    gradients of inputs and of weights; none for the network's input); what stays on the
    device between steps is the weights and Adam's two moments per weight."""
    import argparse

    bench = load_script("bench")
    args = argparse.Namespace(device="cpu", bf16=False, compile=False, plain_adam=False, batch=2)
    ours = bench.Ours("train_small", args)
    forward, step = bench.forward_flops(ours), bench.train_step_flops(ours)
    assert 2.8 * forward < step < 3.0 * forward
    assert all(p.grad is None for p in ours.net.parameters())  # counting left no gradients
    ours.run()
    weights = sum(p.numel() for p in ours.net.parameters()) * 4  # float32
    steps = sum(s["step"].numel() * s["step"].element_size() for s in ours.opt.state.values())
    buffers = sum(b.numel() * b.element_size() for b in ours.net.buffers())
    assert bench.resident_bytes(ours) == 3 * weights + steps + buffers
    assert ours.batch == 2  # --batch
