"""`diffuse eval metrics=[fid,kid,is,pr]` (images) or `metrics=[swd,energy]` (2-D data): how
close a run's samples are to the data.

The samples are drawn with the configured sampler and steps (`eval.num_samples` of them, sample
i seeded by (seed, i) as in `diffuse sample`), or read from `eval.samples=<samples.npz>`. Under
`accelerate launch` each process takes a contiguous, disjoint range of sample indices, turns its
samples into features batch by batch, and the features are gathered once: the count is exact,
with no padding and no duplicates, and the numbers do not depend on the process count.

Images are rounded to 8 bits first, so generated samples and the same samples read back from a
samples.npz give the same features. The main process compares them with the reference features
of the data (reference.py, cached) and writes

    <run_dir>/eval/<tag>/<extractor>.json    (file-<folder>-<file>-<hash>/ for eval.samples)

with everything needed to reproduce the number (see `record`).
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from tqdm.auto import tqdm

from diffuse_cli.build import data_shape, resolve_steps
from diffuse_cli.diffusion import quantize
from diffuse_cli.distributed import all_agree, gather_exact, shard
from diffuse_cli.errors import UserError
from diffuse_cli.evaluate.output import strict, write_json
from diffuse_cli.files import folder_locked
from diffuse_cli.generate import sampler_tag
from diffuse_cli.images import from_uint8_nhwc
from diffuse_cli.ranges import POSITIVE, check_ranges, positive_or_null
from diffuse_cli.sampling_loop import guided_model, index_batches, seeded_batches

# metric names a user writes -> what is computed (Inception's FID is the Frechet distance "fd")
QUALITY = {"fid": "fd", "fd": "fd", "kid": "kd", "kd": "kd", "is": "is", "pr": "pr",
           "swd": "swd", "energy": "energy"}  # fmt: skip
IMAGE_METRICS = ("fd", "kd", "is", "pr")
POINT_METRICS = ("swd", "energy")
PRESET_NUM_SAMPLES, DEFAULT_NUM_SAMPLES = 50000, 1000
# source(indices) -> (chunk, samples number chunk) batches: drawn, or read from eval.samples
SampleSource = Callable[[range], Iterator[tuple[range, torch.Tensor]]]
QUALITY_EVAL_RANGES = dict.fromkeys(
    ("kid_subsets", "kid_subset_size", "is_splits", "pr_neighborhood", "swd_projections",
     "batch_size"),
    POSITIVE,
)  # fmt: skip


def check_quality(cfg: DictConfig, names: list[str]) -> list[str]:
    """The computed metrics for the names asked for (in order, without repeats)."""
    wanted = list(dict.fromkeys(QUALITY[n] for n in names))
    images = cfg.data.image_size > 0
    wrong = [m for m in wanted if m not in (IMAGE_METRICS if images else POINT_METRICS)]
    if wrong:
        ask = [n for n in names if QUALITY[n] in wrong]
        fix = "fid, kid, is, pr" if images else "swd, energy"
        kind = "images" if images else "2-D points"
        raise UserError(
            f"metrics {', '.join(ask)} do not apply to data={cfg.data.name} ({kind}); use {fix}"
        )
    check_ranges(cfg.eval, QUALITY_EVAL_RANGES, "eval.")
    check_ranges(cfg, {"batch_size": POSITIVE})
    check_ranges(cfg.eval, {"num_samples": positive_or_null("the default")}, "eval.")
    return wanted


def check_sample_count(cfg: DictConfig, wanted: list[str], num: int, what: str) -> None:
    """UserError, before any sampling, when `num` samples (or reference images: `what`) are too
    few for a metric to be defined: a covariance needs 2, a k-NN radius k + 1."""
    need = {"fd": 2, "kd": 2, "pr": cfg.eval.pr_neighborhood + 1}
    for m in wanted:
        if num < need.get(m, 1):
            shown = {"fd": "fid", "kd": "kid", "pr": "pr"}[m]
            why = ", more than eval.pr_neighborhood" if m == "pr" else ""
            raise UserError(f"{what}={num}: metric {shown} needs at least {need[m]}{why}")


def sample_warnings(cfg: DictConfig, wanted: list[str], gathered: dict) -> list[str]:
    """What makes a number unlike the published ones, without making it wrong."""
    notes = []
    if "fd" in wanted:
        n, d = gathered["features"].shape
        if n < d:
            notes.append(
                f"fd over {n} samples of {d}-dimensional features: the sample covariance has "
                f"rank < {d}, so the distance is biased upward (published FIDs use 50000)"
            )
    if "is" in wanted:
        n, k = gathered["logits"].shape
        splits = max(1, min(cfg.eval.is_splits, n))  # as distances.inception_score
        if n // splits < k:
            notes.append(
                f"is over splits of {n // splits} samples: a split's score is at most its "
                f"sample count, here below the {k} classes"
            )
    return notes


def samples_tag(path: str) -> str:
    """The report folder of eval.samples=path: readable, and distinct for every file."""
    resolved = Path(path).resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:6]
    return f"file-{resolved.parent.name}-{resolved.stem}-{digest}"


def default_num_samples(cfg: DictConfig) -> int:
    """50000 for a published model preset (as the papers), 1000 for everything else."""
    return PRESET_NUM_SAMPLES if cfg.model.image_size else DEFAULT_NUM_SAMPLES


def read_samples(cfg: DictConfig) -> tuple[torch.Tensor, str]:
    """(eval.samples as float [-1, 1] NCHW images (from uint8 NHWC arr_0) or [N, D] points,
    the sha256 of the file's bytes): one read, so the digest a report records is that of the
    samples it measured, even when the file is rewritten meanwhile."""
    path = Path(cfg.eval.samples)
    if not path.is_file():
        raise UserError(
            f"eval.samples={path}: no such file; give a samples.npz from diffuse sample"
        )
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data)) as npz:
            arr = npz["arr_0"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"eval.samples={path}: not an .npz with an arr_0 array ({err})") from err
    digest = hashlib.sha256(data).hexdigest()
    del data  # arr is a copy: do not keep both of 50k images
    shape = data_shape(cfg)
    if len(shape) == 3:
        c, h, w = shape
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (h, w, c):
            raise UserError(
                f"eval.samples={path}: arr_0 is {arr.dtype} {list(arr.shape)}, but this run's "
                f"images need uint8 [N, {h}, {w}, {c}] (NHWC)"
            )
        return from_uint8_nhwc(torch.from_numpy(arr)), digest
    if arr.ndim != 2 or arr.shape[1] != shape[0]:
        raise UserError(
            f"eval.samples={path}: arr_0 is {list(arr.shape)}, expected [N, {shape[0]}]"
        )
    return torch.from_numpy(arr.astype(np.float32)), digest


@torch.no_grad()
def extract_share(cfg, source: SampleSource, indices: range, extractor, progress):
    """This process's samples `indices` as {"index", "features", "logits"} (images, through
    the extractor) or {"index", "points"} (2-D), on the CPU."""
    parts = []
    bar = tqdm(total=len(indices), desc="eval samples", unit="sample", disable=not progress)
    for chunk, x in source(indices):
        part = {"index": torch.tensor(list(chunk), dtype=torch.int64)}
        if extractor is None:
            part["points"] = x.float().cpu()
        else:
            features, logits = extractor.extract(quantize(x))
            part |= {"features": features.float().cpu(), "logits": logits.float().cpu()}
        parts.append(part)
        bar.update(len(chunk))
    bar.close()
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def fresh_points(cfg: DictConfig, num: int) -> torch.Tensor:
    """`num` new points of the 2-D data, from a stream neither split uses (stream 2)."""
    from diffuse_cli.data.toy2d import TOY_SETS

    if cfg.data.name not in TOY_SETS:
        raise UserError(f"metrics swd, energy need a 2-D toy dataset, not data={cfg.data.name}")
    draw = TOY_SETS[cfg.data.name][0]
    points, _ = draw(np.random.default_rng([cfg.data.seed, 2, cfg.seed]), num)
    return torch.as_tensor(points, dtype=torch.float32)


def image_metrics(cfg, wanted, gathered, reference, extractor) -> dict:
    from diffuse_cli.evaluate import distances as D

    ec, out = cfg.eval, {}
    features = gathered["features"]
    if "fd" in wanted:
        ref = {"mu": reference["mu"], "sigma": reference["sigma"]}
        out[extractor.metric_name("fd")] = D.frechet_distance(D.feature_statistics(features), ref)
    if "kd" in wanted:
        kd = D.kernel_distance(features, reference["features"], ec.kid_subsets,
                               ec.kid_subset_size, seed=cfg.seed)  # fmt: skip
        name = extractor.metric_name("kd")
        out |= {
            name: kd["mean"],
            f"{name}_std": kd["std"],
            f"{name}_subset_size": kd["subset_size"],
        }
    if "is" in wanted:
        score = D.inception_score(gathered["logits"], ec.is_splits, seed=cfg.seed)
        name = extractor.metric_name("is")
        out |= {name: score["mean"], f"{name}_std": score["std"], f"{name}_splits": score["splits"]}
    if "pr" in wanted:
        pr = D.precision_recall(features, reference["features"], ec.pr_neighborhood)
        out |= {extractor.metric_name(k): v for k, v in pr.items()}
    return out


def point_metrics(cfg, wanted, points: torch.Tensor, fresh: torch.Tensor) -> dict:
    from diffuse_cli.evaluate import distances as D

    out = {}
    if "swd" in wanted:
        out["swd"] = D.sliced_wasserstein(points, fresh, cfg.eval.swd_projections, seed=cfg.seed)
    if "energy" in wanted:
        out["energy"] = D.energy_distance(points, fresh)
    return out


def versions() -> dict:
    import accelerate
    import torch_fidelity

    from diffuse_cli.version import __version__

    return {"diffuse": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "torch_fidelity": torch_fidelity.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}  # fmt: skip


def as_plain_python(value):
    """A config value as plain Python (ListConfig -> list) for the JSON report."""
    return list(value) if isinstance(value, ListConfig) else value


def sample_source(cfg: DictConfig, load_model: Callable, device) -> tuple:
    """(source, num, report folder name, GuidedModel or None, provenance): `source(indices)`
    gives (chunk, samples) batches of eval.samples, or of the run's samples drawn with the
    configured sampler as `diffuse sample` draws them (sampling_loop.seeded_batches)."""
    if cfg.eval.samples:
        given, digest = read_samples(cfg)  # every process reads its own copy
        if not all_agree(digest):
            raise UserError(
                f"eval.samples={cfg.eval.samples} changed while the processes read it; run "
                "again once it is written"
            )
        num = len(given) if cfg.eval.num_samples is None else cfg.eval.num_samples
        if num > len(given):
            raise UserError(f"eval.num_samples={num}, but eval.samples has only {len(given)}")
        tag = samples_tag(cfg.eval.samples)
        provenance = {"samples": str(cfg.eval.samples), "samples_sha256": digest,
                      "checkpoint": None, "weights_sha256": None,
                      "checkpoint_step": None, "ema": None, "ema_std": None,
                      "sampler": None, "steps": None,
                      "eta": None, "guidance": None, "class_labels": None}  # fmt: skip

        def read(indices: range):
            for chunk in index_batches(indices, cfg.batch_size):
                yield chunk, given[chunk.start : chunk.stop]

        return read, num, tag, None, provenance
    model, diffusion, weights = load_model()
    steps = resolve_steps(cfg, diffusion)
    guided = guided_model(cfg, model, diffusion, device)
    guidance = OmegaConf.to_container(cfg.guidance, resolve=True)
    if guided.classifier_weights is not None:  # which weights guided: the samples depend on them
        guidance |= {"checkpoint": guided.classifier_weights.folder.name,
                     "weights_sha256": guided.classifier_weights.sha256}  # fmt: skip
    sampler = sampler_settings(cfg)
    labels = as_plain_python(cfg.class_labels) if guided.num_classes else None
    provenance = {"samples": None, "checkpoint": weights.folder.name,
                  "checkpoint_step": weights.step, "weights_sha256": weights.sha256,
                  "ema": cfg.eval.ema, "ema_std": cfg.ema_std,
                  "sampler": sampler, "steps": steps,
                  "eta": sampler.get("eta"), "guidance": guidance,
                  "class_labels": labels}  # fmt: skip
    return (
        lambda indices: seeded_batches(cfg, guided, diffusion, device, indices),
        cfg.eval.num_samples or default_num_samples(cfg),
        sampler_tag(cfg, steps),
        guided,
        provenance,
    )


def sampler_settings(cfg: DictConfig) -> dict:
    """cfg.sampler as the sampler that ran reads it: its name, the settings every sampler takes
    (spacing, clip_denoised) and its own options (samplers.option_names; an EDM run's heun has
    its s_churn, ...), so a ddim report holds no pc or langevin options that played no part in
    its samples."""
    from diffuse_cli.build import is_edm
    from diffuse_cli.samplers import option_names

    settings = OmegaConf.to_container(cfg.sampler)
    read = {"name", "spacing", "clip_denoised", *option_names(settings["name"], is_edm(cfg))}
    return {key: value for key, value in settings.items() if key in read}


# how a report was computed, and what it found: all but the identity of its samples
RUNTIME_KEYS = ("seconds", "versions", "device", "num_processes")
RESULT_AND_RUNTIME_KEYS = ("metrics", "warnings", "earlier", *RUNTIME_KEYS)


def samples_identity(report: dict) -> dict:
    """What decides a report's samples and their comparison: all but its metrics and how and
    when they were computed."""
    same = {k: v for k, v in report.items() if k not in RESULT_AND_RUNTIME_KEYS}
    same["reference"] = {k: v for k, v in (same.get("reference") or {}).items() if k != "cached"}
    if same.get("ema_std") is None:  # reports from before post-hoc EMA: the checkpoint's EMA
        same.pop("ema_std", None)
    return same


def kept_provenance(earlier: dict, kept: list[str]) -> list[dict]:
    """[{"metrics": names, "versions", "device", ...}]: how each kept metric was computed, from
    the earlier report or from the reports before it."""
    entries = []
    for entry in earlier.get("earlier", []):
        names = [m for m in entry["metrics"] if m in kept]
        if names:
            entries.append(entry | {"metrics": names})
    own = [m for m in kept if not any(m in e["metrics"] for e in entries)]
    if own:
        entries.insert(0, {"metrics": own, **{k: earlier.get(k) for k in RUNTIME_KEYS}})
    return entries


def with_earlier_metrics(record: dict, path: Path) -> dict:
    """The report to write at `path`. The tag does not name the metrics, so an earlier report
    there may hold some this eval did not compute. Where everything but the metrics and how
    they were run agrees (samples_identity: the run, checkpoint, sampler settings, seed and
    number, or an eval.samples file's content; extractor and reference), they are kept, with
    their own versions and devices under `earlier`, so `metrics=[fid]` after
    `metrics=[fid,kid]` keeps kid. Otherwise they go, and stderr says which."""
    try:
        earlier = json.loads(path.read_text())
        old = earlier["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return record
    new = json.loads(json.dumps(strict(record)))
    lost = [k for k in old if k not in new["metrics"]]
    if not lost:
        return record
    before, now = samples_identity(earlier), samples_identity(new)
    if before != now:
        differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        print(f"note: replacing {path}, whose {', '.join(lost)} came from other samples or "
              f"settings (other {', '.join(differ)})", file=sys.stderr)  # fmt: skip
        return record
    merged = new | {"metrics": old | new["metrics"], "earlier": kept_provenance(earlier, lost)}
    earlier_notes = earlier.get("warnings", [])  # of the same samples: still true
    notes = earlier_notes + [w for w in new.get("warnings", []) if w not in earlier_notes]
    if notes:
        merged["warnings"] = notes
    return merged


def merge_report(record: dict, path: Path) -> None:
    """Write `record` at `path`, keeping the earlier metrics there (with_earlier_metrics), with
    the folder locked from the read to the rename: evals of the same samples run in parallel
    with different metrics would otherwise each write back only their own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_locked(path.parent):
        write_json(with_earlier_metrics(record, path), path)


def compare_with_reference(
    cfg: DictConfig, wanted: list[str], gathered: dict, extractor, reference
) -> dict:
    """{"extractor", "reference", "metrics"}: the gathered samples against the reference
    features (images) or fresh data samples (2-D)."""
    if extractor is None:
        num = len(gathered["points"])
        fresh = fresh_points(cfg, num)
        return {
            "extractor": None,
            "reference": {"fresh_samples": num, "stream": [cfg.data.seed, 2, cfg.seed]},
            "metrics": point_metrics(cfg, wanted, gathered["points"], fresh),
        }
    return {
        "extractor": {"name": extractor.name, "key": extractor.key, **extractor.implementation},
        "reference": {k: reference[k] for k in ("split", "num", "cache", "cached")},
        "metrics": image_metrics(cfg, wanted, gathered, reference, extractor),
    }


def quality_metric(
    cfg: DictConfig, names: list[str], load_model: Callable, device, state
) -> Path | None:
    """Draw or read the samples, extract on every process, gather once, and (main process)
    compare with the reference and write the report. Returns its path on the main process."""
    from diffuse_cli.evaluate.features import build_extractor
    from diffuse_cli.evaluate.reference import reference_features, reference_size

    tick = time.perf_counter()
    wanted = check_quality(cfg, names)
    source, num, tag, guided, provenance = sample_source(cfg, load_model, device)
    if cfg.eval.samples:  # a drawn count was checked with the command's settings
        given = cfg.eval.num_samples is None
        what = f"the samples in eval.samples={cfg.eval.samples}" if given else "eval.num_samples"
        check_sample_count(cfg, wanted, num, what)
    extractor = build_extractor(cfg, device) if cfg.data.image_size > 0 else None
    reference, before_reference = None, time.perf_counter()
    if extractor is not None:  # first: a missing data set or too few images fail early
        size = reference_size(cfg)
        check_sample_count(cfg, wanted, size[2], "reference images")
        reference = reference_features(cfg, extractor, device, state, size)  # main only
    seconds_reference = time.perf_counter() - before_reference
    indices = shard(num, state.process_index, state.num_processes)
    share = extract_share(cfg, source, indices, extractor, cfg.progress and state.is_main_process)
    seconds_samples = time.perf_counter() - tick - seconds_reference
    gathered = gather_exact(share, num)
    if not state.is_main_process:
        return None
    record = {"kind": "sample_quality", "run_dir": str(cfg.run_dir), **provenance,
              "seed": cfg.seed, "num_samples": num}  # fmt: skip
    if guided is not None and guided.batches_drawn:
        record["nfe_per_sample"] = guided.evaluations_per_sample()
    tock = time.perf_counter()
    record |= compare_with_reference(cfg, wanted, gathered, extractor, reference)
    if extractor is not None:
        record["warnings"] = sample_warnings(cfg, wanted, gathered)
        for note in record["warnings"]:
            print(f"warning: {note}", file=sys.stderr)
    record |= {
        "data": {k: cfg.data[k] for k in ("name", "image_size", "channels")},
        "versions": versions(),
        "num_processes": state.num_processes,
        "device": str(device),
        "seconds": {
            "reference": seconds_reference,
            "samples_and_features": seconds_samples,
            "metrics": time.perf_counter() - tock,
            "total": time.perf_counter() - tick,
        },  # fmt: skip
    }
    path = Path(cfg.run_dir) / "eval" / tag / f"{extractor.name if extractor else 'points'}.json"
    merge_report(record, path)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items()
                      if not k.endswith(("_std", "_subset_size", "_splits")))  # fmt: skip
    print(f"{shown} over {num} samples in {record['seconds']['total']:.1f} s; wrote {path}")
    return path
