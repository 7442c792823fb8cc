"""`diffuse sample`: draw samples from a run's latest EMA checkpoint and write them to disk.

Every sample i is seeded by (seed, i), so a sample does not depend on the batch size or on how
many processes share the work: under `accelerate launch` each process draws a contiguous share
of the indices and the main process writes them all.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from diffuse_cli.build import (
    build_diffusion,
    build_guidance,
    check_family,
    data_shape,
    is_edm,
    is_score_model,
    resolve_steps,
    sample,
)
from diffuse_cli.distributed import gather_exact, process_state, shard
from diffuse_cli.errors import UserError
from diffuse_cli.files import replacing
from diffuse_cli.images import from_uint8_nhwc, save_preview, to_uint8_nhwc
from diffuse_cli.runs import differences, read_run_config, variant_name, with_run_config
from diffuse_cli.samplers import NFECounter, PerSampleNoise
from diffuse_cli.sampling_labels import sample_labels
from diffuse_cli.train.checkpoint import agreed_step, step_name
from diffuse_cli.train.ema_snapshots import check_ema_std, snapshot_step


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for, but no CUDA GPU is available")
    return torch.device(name)


def sample_seed(seed: int, index: int) -> int:
    return (seed << 32) + index


def sampler_tag(cfg: DictConfig, steps: int) -> str:
    """'<sampler>-<steps>', then every sampler option that differs from the sampler's shipped
    config ('-eta0.5', '-spacingkarras', '-no_clip_denoised', ...), the guidance, the class
    labels unless random ('-labels3', '-unconditional'), '-raw' for an eval of the raw (not
    EMA) weights and the seed unless 0 ('-seed1'). It names sample folders and eval reports,
    so one setting always lands in one place and two settings never overwrite each other."""
    name = f"{cfg.sampler.name}-{steps}"
    if cfg.sampler.name == "langevin":  # L levels x T steps
        name += f"x{cfg.sampler.steps_per_level}"
    for key, default in shipped_sampler_options(cfg.sampler.name).items():
        value = cfg.sampler.get(key)
        if key not in ("name", "steps_per_level") and value != default:
            name += "-" + _setting(key, value)
    guidance = cfg.get("guidance")
    if guidance is not None and guidance.name != "none":
        name += f"-{guidance.name}{guidance.scale:g}"
        if guidance.name == "classifier":
            name += classifier_tag(cfg)
    if "class_labels" in cfg and cfg.class_labels is None:
        name += "-unconditional"
    elif "class_labels" in cfg and cfg.class_labels != "random":
        name += "-" + labels_tag(cfg.class_labels)
    return variant_name(cfg, name)


def classifier_tag(cfg: DictConfig) -> str:
    """'' for the default guidance classifier (the `classifier` folder beside the run),
    '-clf_<folder>_<digest of its path>' for any other, so two classifiers never share a
    folder of samples or reports."""
    given = os.path.abspath(str(cfg.guidance.classifier))
    if given == os.path.abspath(os.path.join(str(cfg.run_dir), "..", "classifier")):
        return ""
    digest = hashlib.sha1(given.encode()).hexdigest()[:6]
    return f"-clf_{os.path.basename(given)}_{digest}"


def labels_tag(labels) -> str:
    """'labels3', 'labels0_3': the given class labels, or their digest when there are many."""
    listed = [str(y) for y in (labels if isinstance(labels, list | ListConfig) else [labels])]
    if len(listed) <= 8:
        return "labels" + "_".join(listed)
    digest = hashlib.sha1(",".join(listed).encode()).hexdigest()[:8]
    return f"labels{len(listed)}-{digest}"


def shipped_sampler_options(name: str) -> dict:
    """configs/sampler/<name>.yaml as the package ships it ({} for a sampler file of a user's
    own config folder)."""
    path = resources.files("diffuse_cli.configs") / "sampler" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.create(path.read_text())) if path.is_file() else {}


def _setting(key: str, value) -> str:
    if isinstance(value, bool):
        return key if value else f"no_{key}"
    if isinstance(value, float):
        return f"{key}{value:g}"
    return f"{key}{'none' if value is None else value}"


def output_dir(cfg: DictConfig, steps: int) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return Path(cfg.run_dir) / "samples" / sampler_tag(cfg, steps)


def draw_samples(
    cfg: DictConfig,
    model,
    diffusion,
    device: torch.device,
    indices: range,
    labels: torch.Tensor | None = None,
    cond_fn=None,
    progress: bool = True,
) -> torch.Tensor:
    """Samples number `indices` (on the CPU), in batches of cfg.batch_size; `labels` [len]
    (one per index) go to the model as y."""
    shape = data_shape(cfg)
    out = []
    for start in range(indices.start, indices.stop, cfg.batch_size):
        chunk = range(start, min(start + cfg.batch_size, indices.stop))
        noise = PerSampleNoise([sample_seed(cfg.seed, i) for i in chunk], device)
        x_T = noise.randn(shape)
        kwargs = {}
        if labels is not None:
            offset = start - indices.start
            kwargs = {"y": labels[offset : offset + len(chunk)].to(device)}
        x = sample(cfg, model, diffusion, x_T, noise, kwargs, progress=progress, cond_fn=cond_fn)
        out.append(x.cpu())
    return torch.cat(out) if out else torch.empty(0, *shape)


def _save_npz(path: Path, arr: np.ndarray, labels: np.ndarray | None) -> None:
    """Written beside `path` and renamed: the old file or the new one, never a part, and no
    partial file left behind on a full disk."""
    arrays = {"arr_0": arr} if labels is None else {"arr_0": arr, "arr_1": labels}
    with replacing(path) as tmp:
        np.savez(tmp, **arrays)


def guidance_classifier(cfg: DictConfig, device: torch.device):
    """(classifier, its LoadedWeights) of guidance=classifier, checked against the generator's
    run: trained for the same noise schedule and the same data shape."""
    from diffuse_cli.loading import open_classifier_everywhere

    path = cfg.guidance.classifier
    if not path:
        raise UserError(
            "guidance=classifier needs guidance.classifier=<the run folder of a classifier "
            "trained with `diffuse train task=classifier`>"
        )
    path = os.path.normpath(str(path))
    clf_cfg, classifier, weights = open_classifier_everywhere(path, device)
    if not clf_cfg.classifier.noised:
        raise UserError(
            f"the classifier in '{path}' was trained on clean images (classifier.noised=false) "
            "and cannot read x_t; guidance needs one trained on noisy images (the default)"
        )
    if is_score_model(clf_cfg):  # trained before task=classifier refused schedule=ncsn
        raise UserError(
            f"the classifier in '{path}' was trained with schedule=ncsn; classifier guidance "
            "needs one trained with the generator's DDPM schedule"
        )
    if clf_cfg.data.name != cfg.data.name:
        raise UserError(
            f"the classifier in '{path}' was trained on data={clf_cfg.data.name}, the model on "
            f"data={cfg.data.name}; its labels are another data set's classes"
        )
    ours = OmegaConf.to_container(cfg.schedule, resolve=True)
    theirs = OmegaConf.to_container(clf_cfg.schedule, resolve=True)
    if is_edm(cfg) or is_edm(clf_cfg):  # the classifier reads c_in x: the same sigma_data
        if not (is_edm(cfg) and is_edm(clf_cfg)) or ours["sigma_data"] != theirs["sigma_data"]:
            raise UserError(
                f"the classifier in '{path}' was trained for schedule={theirs['name']} "
                f"(sigma_data={theirs['sigma_data']}), the model with schedule={ours['name']} "
                f"(sigma_data={ours['sigma_data']}); train one with the generator's schedule: "
                "`diffuse train task=classifier schedule=...`"
            )
    elif not _same_alphas(cfg, clf_cfg):
        diff = differences("schedule", ours, theirs, "classifier")
        raise UserError(
            f"the classifier in '{path}' was trained for another noise schedule ({diff}); "
            "train one with the generator's schedule: `diffuse train task=classifier "
            "schedule=...`"
        )
    if data_shape(clf_cfg) != data_shape(cfg):
        raise UserError(
            f"the classifier in '{path}' takes data of shape {data_shape(clf_cfg)}, the model "
            f"makes {data_shape(cfg)}"
        )
    return classifier, weights


def _same_alphas(cfg: DictConfig, clf_cfg: DictConfig) -> bool:
    """Whether two DDPM configs have the same alpha-bar table (keys a schedule ignores may
    differ)."""
    ours_abar = build_diffusion(cfg).alphas_cumprod
    theirs_abar = build_diffusion(clf_cfg).alphas_cumprod
    return ours_abar.shape == theirs_abar.shape and torch.allclose(ours_abar, theirs_abar)


def conditioning(cfg: DictConfig, model, classifier) -> tuple[int | None, int | None]:
    """(number of classes to draw labels from or None, the null label or None), checking that
    the guidance fits the run."""
    g = cfg.guidance
    conditional = bool(getattr(model, "num_classes", None))
    dropout = read_run_config(cfg.run_dir).trainer.get("label_dropout", 0.0) if conditional else 0
    null = model.num_classes if conditional and dropout > 0 else None
    if g.name == "cfg" and null is None:
        raise UserError(
            "guidance=cfg needs a class-conditional model trained with label dropout; this run "
            + ("has trainer.label_dropout=0" if conditional else "is unconditional")
        )
    if g.name != "none" and cfg.class_labels is None:
        raise UserError(f"guidance={g.name} steers towards labels; class_labels=null has none")
    if g.name == "classifier":
        n = getattr(classifier, "num_outputs", None) or classifier.out_dim  # UNet / MLP head
        if conditional and n != model.num_classes:
            raise UserError(
                f"the classifier knows {n} classes, the model {model.num_classes}; "
                "train the classifier on the model's data"
            )
        return n, null
    return (model.num_classes if conditional else None), null


def sample_command(cfg: DictConfig) -> Path:
    from diffuse_cli.loading import load_run

    cfg = with_run_config(cfg, cfg.run_dir)
    check_family(cfg)  # a sampler of the other family fails before any weights are read
    if cfg.num_samples <= 0:
        raise UserError(f"num_samples={cfg.num_samples} must be > 0")
    if cfg.batch_size <= 0:
        raise UserError(f"batch_size={cfg.batch_size} must be > 0")
    steps = resolve_steps(cfg, build_diffusion(cfg))  # bad sampler settings: before loading
    if cfg.guidance.name not in ("none", "classifier", "cfg"):
        raise UserError(f"guidance={cfg.guidance.name!r} is not one of: none, classifier, cfg")
    state = process_state()
    device = state.device if state.num_processes > 1 else pick_device(cfg.device)
    if cfg.ema_std is not None:  # refused before anything is read
        check_ema_std(read_run_config(cfg.run_dir), cfg.run_dir, cfg.ema_std)
    find = snapshot_step if cfg.ema_std is not None else None  # the snapshot's step
    step = agreed_step(cfg.run_dir, cfg.checkpoint, find=find)
    _, model, diffusion = load_run(
        cfg.run_dir, device=device, config=cfg, step=step, ema_std=cfg.ema_std
    )
    classifier = None
    if cfg.guidance.name == "classifier":
        classifier, _ = guidance_classifier(cfg, device)
    num_classes, null = conditioning(cfg, model, classifier)
    labels = sample_labels(cfg, num_classes, range(cfg.num_samples), null)
    guided, cond_fn = build_guidance(cfg, model, diffusion, classifier)
    out = output_dir(cfg, steps)
    what = f"{steps} steps"
    if cfg.sampler.name == "langevin":
        what = f"{steps} noise levels x {cfg.sampler.steps_per_level} steps"
    if cfg.guidance.name != "none":
        what += f", {cfg.guidance.name} guidance x{cfg.guidance.scale:g}"
    where = f"{state.num_processes} processes" if state.num_processes > 1 else str(device)
    say = print if state.is_main_process else (lambda *a, **k: None)
    ema = "EMA" if cfg.ema_std is None else f"EMA of sigma_rel {cfg.ema_std:.3f} (post hoc)"
    say(f"sampling {cfg.num_samples} with {cfg.sampler.name}, {what}, on {where}, "
        f"{step_name(step)} {ema}")  # fmt: skip
    counted = NFECounter(guided)
    mine = shard(cfg.num_samples, state.process_index, state.num_processes)
    mine_labels = None if labels is None else labels[mine.start : mine.stop]
    progress = cfg.progress and state.is_main_process  # one bar, the main process's
    x = draw_samples(cfg, counted, diffusion, device, mine, mine_labels, cond_fn, progress)
    images = x.dim() == 4
    arr = torch.from_numpy(to_uint8_nhwc(x)) if images else x  # 8-bit: 1/4 of the float size
    if state.num_processes > 1:  # each process drew samples number `mine`; main writes all
        gathered = gather_exact({"index": torch.tensor(mine), "x": arr}, cfg.num_samples)
        if not state.is_main_process:
            return out
        arr = gathered["x"]
    batches = -(-len(mine) // cfg.batch_size)
    doubled = (
        " (each on a doubled batch: both guidance branches)" if cfg.guidance.name == "cfg" else ""
    )
    if batches:
        print(f"{counted.calls // batches} network evaluations per sample{doubled}")
    out.mkdir(parents=True, exist_ok=True)
    saved = None if labels is None or cfg.class_labels is None else labels.numpy()
    _save_npz(out / "samples.npz", arr.numpy(), saved)  # arr_1: the labels, unless unconditional
    preview = out / ("grid.png" if images else "scatter.png")
    save_preview(from_uint8_nhwc(arr[:256]) if images else arr, preview)
    print(f"wrote {out / 'samples.npz'} and {preview}")
    return out
