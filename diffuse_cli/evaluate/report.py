"""`diffuse report <run or sweep dir>`: gather the sample-quality JSONs below a folder into a
Markdown table and a plot of each metric against sampling steps, one line per run and sampler
(the way papers compare samplers, e.g. Song et al. 2021, Table 1 and Fig. 3).

    diffuse eval -m sampler=ddim,ddpm steps=10,20,50,100 metrics=[fid]
    diffuse report runs/default          # -> runs/default/report.md, runs/default/report.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from diffuse_cli.files import replacing, write_atomically

AUXILIARY = ("_std", "_subset_size", "_splits")  # stored beside a metric, not plotted


def collect(root: Path) -> tuple[list[dict], list[str]]:
    """(records, skipped): every sample-quality report below `root` (eval/<tag>/<extractor>.json),
    each with a "run" key (its run folder relative to `root`, '.' for root itself) and a
    "path"; and "<path>: <why>" for each JSON there that cannot be shown."""
    records, skipped = [], []
    for path in sorted(Path(root).rglob("eval/*/*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            skipped.append(f"{path}: cannot be read ({err})")
            continue
        if not isinstance(record, dict) or record.get("kind") != "sample_quality":
            continue  # loss.json, nll.json and other files of a tag folder
        problem = malformed(record)
        if problem:
            skipped.append(f"{path}: {problem}")
            continue
        run = path.parent.parent.parent
        records.append({**record, "run": str(run.relative_to(root)), "path": str(path)})
    return records, skipped


def malformed(record: dict) -> str | None:
    """What keeps a sample-quality report from a row of the table, or None."""
    for key in ("metrics", "steps", "num_samples", "sampler", "extractor"):
        if key not in record:
            return f"no '{key}' in it"
    if not isinstance(record["metrics"], dict):
        return "its metrics are not a mapping"
    for name, value in record["metrics"].items():
        if value is not None and not isinstance(value, int | float):
            return f"metric {name} is {value!r}, not a number"
    if record["steps"] is not None and not isinstance(record["steps"], int):
        return f"steps is {record['steps']!r}, not a number"
    if not isinstance(record["sampler"], dict | None) or not isinstance(
        record["extractor"], dict | None
    ):
        return "its sampler or extractor is not a mapping"
    if record["sampler"] is None and "samples" not in record:
        return "neither a sampler nor a samples file in it"
    return None


def metric_names(records: list[dict]) -> list[str]:
    names = dict.fromkeys(k for r in records for k in r["metrics"] if not k.endswith(AUXILIARY))
    return list(names)


def _sampler(record: dict) -> str:
    if record["sampler"] is None:
        return f"file {record['samples']}"
    name = record["sampler"].get("name", "?")
    if name == "langevin":  # steps counts noise levels; each level has its own steps
        name += f" x{record['sampler'].get('steps_per_level')}"
    # The report's folder, <sampler>-<steps>[-<setting>...], names what differs from the
    # sampler's defaults (eta, spacing, guidance, raw weights, ...).
    settings = Path(record["path"]).parent.name.split("-", 2)[2:]
    return name + (f" ({settings[0]})" if settings else "")


def _cell(metrics: dict, name: str) -> str:
    if name not in metrics:
        return ""
    value, std = metrics[name], metrics.get(f"{name}_std")
    if value is None or not math.isfinite(value):  # strict JSON writes a non-finite one null
        return "n/a"
    return f"{value:.4g}" + (f" ± {std:.2g}" if std is not None else "")


def _key(record: dict):
    return (record["run"], _sampler(record), record["steps"] or 0)


def table(records: list[dict]) -> str:
    """A Markdown table: one row per report, sorted by run, sampler and steps."""
    names = metric_names(records)
    head = ["run", "sampler", "steps", "NFE", "samples", "features", *names]
    rows = [head, ["---"] * len(head)]
    for r in sorted(records, key=_key):
        rows.append([
            r["run"], _sampler(r), str(r["steps"] or ""), str(r.get("nfe_per_sample") or ""),
            str(r["num_samples"]), (r["extractor"] or {}).get("name", "points"),
            *(_cell(r["metrics"], n) for n in names),
        ])  # fmt: skip
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def figure(records: list[dict]):
    """One panel per metric: the metric against steps (log scale, ticks at the steps), a line
    per run + sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metric_names(records)
    series: dict[str, list[dict]] = {}
    for r in sorted(records, key=_key):
        if r["steps"] is not None:
            label = _sampler(r) if r["run"] == "." else f"{r['run']}: {_sampler(r)}"
            series.setdefault(label, []).append(r)
    steps = sorted({r["steps"] for rs in series.values() for r in rs})
    cols = min(3, max(1, len(names)))
    rows = -(-max(1, len(names)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.5 * rows), dpi=100, squeeze=False)
    colours = {label: f"C{i % 10}" for i, label in enumerate(series)}  # one colour per line
    for ax, name in zip(axes.flat, names, strict=False):
        for label, rs in series.items():
            points = [(r["steps"], r["metrics"][name]) for r in rs
                      if _cell(r["metrics"], name) not in ("", "n/a")]  # fmt: skip
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label, color=colours[label])
        ax.set_xscale("log")
        if steps:
            ax.set_xticks(steps, [str(s) for s in steps])
            ax.minorticks_off()
        ax.set_xlabel("sampling steps")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    drawn = [ax for ax in axes.flat if ax.get_lines()]  # a metric may have no finite point
    if drawn:
        drawn[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(records: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(records)
    with replacing(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def write_report(root: Path, out: Path | None = None) -> tuple[Path, Path]:
    """report.md and report.png in `out` (default `root`) from the reports below `root`; each
    report that cannot be shown is named on stderr."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; give a run folder or a sweep folder")
    records, skipped = collect(root)
    for note in skipped:
        print(f"diffuse report: skipped {note}", file=sys.stderr)
    if not records:
        if skipped:
            raise FileNotFoundError(f"none of the {len(skipped)} sample-quality reports under "
                                    f"{root} can be shown (see above)")  # fmt: skip
        raise FileNotFoundError(
            f"no sample-quality reports under {root} (eval/<sampler>-<steps>/*.json); run "
            "`diffuse eval metrics=[fid]` there first"
        )
    out = Path(out) if out else root
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / "report.md", out / "report.png"
    write_atomically(md, table(records))
    plot(records, png)
    return md, png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="diffuse report",
        description=__doc__.split("\n\n")[0].replace("\n", " "),  # the first paragraph
    )
    parser.add_argument(
        "root", type=Path, nargs="?", default=Path("runs/default"),
        help="a run folder or a sweep folder (default: runs/default)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: root)")
    args = parser.parse_args(argv)
    try:
        md, png = write_report(args.root, args.out)
    except OSError as err:  # no reports, or an --out that cannot be written
        print(f"diffuse report: error: {err}", file=sys.stderr)
        return 2
    print(md.read_text(), end="")
    print(f"wrote {md} and {png}")
    return 0
