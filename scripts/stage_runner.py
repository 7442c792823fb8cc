"""Run a check as stages, each in its own process with its own time limit, and keep a report
that is complete after every stage.

Why: on a lent machine minutes are scarce; a stage that hangs or crashes (a compiler, a CUDA
error, a deadlocked launcher) must cost only its own limit, and a run killed from outside must
still leave every finished stage's result on disk.

A stage is a command. It may write `{"figures": {...}}` to the file named by $STAGE_FIGURES,
as often as it likes (the last write counts, so a stage that runs out of time keeps what it had
measured), and `"status": "skipped", "reason": "..."` there to say it could not run here.
Its status is then:
- ok: exit status 0;
- failed: another exit status (the reason gives it and the last line of output);
- skipped: the stage said so, or it reached its time limit (its whole process group is killed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FIGURES_VARIABLE = "STAGE_FIGURES"
TAIL_CHARS = 4000  # the output kept in the report of a stage that is not ok
LOG_CHARS = 200_000  # the output of each stage kept in the combined log


@dataclass
class Stage:
    """One stage: `command` runs with `env` added; `skip` (a reason) skips it without running."""

    name: str
    limit_s: float
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None


def write_replacing(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a report."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def read_figures(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written, or cut off by the kill
        return {}


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_stage(stage: Stage, work: Path, cwd: Path | None = None) -> tuple[dict, str]:
    """Run one stage; returns its result and its whole output."""
    if stage.skip:
        return {
            "name": stage.name,
            "status": "skipped",
            "seconds": 0.0,
            "figures": {},
            "reason": stage.skip,
            "limit_s": stage.limit_s,
        }, ""
    figures_path = work / f"{stage.name}.figures.json"
    figures_path.unlink(missing_ok=True)
    env = {**os.environ, **stage.env, FIGURES_VARIABLE: str(figures_path)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        stage.command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: a timeout kills its children too
    )
    try:
        output, _ = proc.communicate(timeout=stage.limit_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    seconds = time.perf_counter() - start
    written = read_figures(figures_path)
    result = {
        "name": stage.name,
        "status": "ok",
        "seconds": round(seconds, 2),
        "figures": written.get("figures", {}),
        "limit_s": stage.limit_s,
    }
    if timed_out:
        result["status"] = "skipped"
        result["reason"] = f"time limit of {stage.limit_s:g} s reached; the stage was killed"
    elif written.get("status") == "skipped":
        result["status"] = "skipped"
        result["reason"] = written.get("reason", "")
    elif proc.returncode != 0:
        result["status"] = "failed"
        result["reason"] = f"exit status {proc.returncode}: {last_line(output)}"
    if result["status"] != "ok" and output:
        result["output_tail"] = output[-TAIL_CHARS:]
    return result, output


def markdown(title: str, header: dict, results: list[dict]) -> str:
    """The report as a table of stages, then each stage's figures and reasons."""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| stage | status | seconds | limit s | reason |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in results:
        reason = r.get("reason", "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {r['name']} | {r['status']} | {r['seconds']:.1f} | {r['limit_s']:g} | {reason} |"
        )
    for r in results:
        if not r["figures"]:
            continue
        lines += ["", f"## {r['name']}", ""]
        for key, value in r["figures"].items():
            lines.append(
                f"- {key}: {json.dumps(value) if isinstance(value, dict | list) else value}"
            )
    return "\n".join(lines) + "\n"


def run_stages(
    stages: list[Stage],
    out: Path,
    stem: str,
    title: str,
    header: dict,
    work: Path,
    cwd: Path | None = None,
) -> list[dict]:
    """Run the stages in order, rewriting `<out>/<stem>.json` and `.md` after each one and
    appending each stage's output to `<out>/<stem>.log`."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    log = out / f"{stem}.log"
    log.write_text("")
    for stage in stages:
        print(f"[{stem}] {stage.name} (limit {stage.limit_s:g} s) ...", flush=True)
        result, output = run_stage(stage, work, cwd)
        results.append(result)
        with log.open("a") as f:
            f.write(f"===== {stage.name}: {result['status']} in {result['seconds']} s\n")
            f.write(output[-LOG_CHARS:] + "\n")
        report = {"header": header, "stages": results}
        write_replacing(out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
        write_replacing(out / f"{stem}.md", markdown(title, header, results))
        reason = f": {result['reason']}" if result.get("reason") else ""
        print(
            f"[{stem}] {stage.name}: {result['status']} in {result['seconds']} s{reason}",
            flush=True,
        )
    return results


class StageFigures:
    """The side of a stage: `record` what it measured (written at once, so a stage killed at its
    limit keeps it), `skip` to say it cannot run here."""

    def __init__(self) -> None:
        path = os.environ.get(FIGURES_VARIABLE)
        self.path = Path(path) if path else None
        self.figures: dict = {}

    def _write(self, extra: dict | None = None) -> None:
        if self.path is not None:
            write_replacing(self.path, json.dumps({"figures": self.figures, **(extra or {})}))

    def record(self, **figures) -> None:
        self.figures.update(figures)
        self._write()

    def skip(self, reason: str) -> None:
        """Mark the stage skipped and end it (exit status 0)."""
        self._write({"status": "skipped", "reason": reason})
        print(f"skipped: {reason}", flush=True)
        raise SystemExit(0)
