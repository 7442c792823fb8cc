"""Reference features of a dataset split: computed once, cached, reused.

The cache file is keyed by dataset, split, resolution, channels, number of images, the
extractor (with its weights) and a digest of the data settings that change the images, so a
changed setting never picks up stale statistics:

    <eval.cache_dir or data.root/reference_stats>/
        shapes-test-32px-3ch-n1000-builtin-af881375-<digest>.safetensors

It holds the features [N, D] (KID and precision/recall need them), their mean [D] and
covariance [D, D] in float64 (the Frechet distance needs those), and, as metadata, what it was
made from. Written to a temporary file and renamed, so a crash leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from diffuse_cli.build import build_data
from diffuse_cli.data.base import evenly_spaced
from diffuse_cli.diffusion import quantize
from diffuse_cli.errors import UserError
from diffuse_cli.files import give_plain_file_mode, replacing
from diffuse_cli.ranges import check_ranges, positive_or_null


def reference_split(cfg: DictConfig) -> str:
    """`eval.reference_split`, by default the training split for a published model preset (as
    the papers compare with it) and the held-out split otherwise."""
    split = cfg.eval.reference_split or ("train" if cfg.model.image_size else "test")
    if split not in ("train", "test"):
        raise UserError(f"eval.reference_split={split}: choose train or test")
    return split


def check_reference_settings(cfg: DictConfig) -> str:
    """The reference split; UserError for a bad eval.reference_split or eval.reference_num (a
    command checks this before it samples)."""
    check_ranges(cfg.eval, {"reference_num": positive_or_null("the whole split")}, "eval.")
    return reference_split(cfg)


def cache_path(
    cfg: DictConfig, split: str, num: int, extractor_key: str, capped: bool = False
) -> Path:
    """The reference cache of `num` images of `split` (`capped`: fewer than the split holds,
    picked evenly spaced) for the extractor of `extractor_key`."""
    d = cfg.data
    folder = Path(cfg.eval.cache_dir) if cfg.eval.cache_dir else Path(d.root) / "reference_stats"
    settings = {k: d[k] for k in ("name", "root", "image_size", "channels", "seed")}
    settings["num"] = d.num_train if split == "train" else d.num_test
    if capped:  # which num images: caches of the first num, from before, differ
        settings["picked"] = "evenly_spaced"
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{d.name}-{split}-{d.image_size}px-{d.channels}ch-n{num}-{extractor_key}-{digest}"
    return folder / f"{name}.safetensors"


@torch.no_grad()
def compute_features(cfg: DictConfig, dataset, extractor, device, progress: bool):
    """Features [N, D] of the images of `dataset`, on the CPU (None when it is empty)."""
    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False)
    parts = []
    for x, _ in tqdm(loader, desc="reference", disable=not progress, leave=False):
        features, _ = extractor.extract(quantize(x).to(device))
        parts.append(features.float().cpu())
    return torch.cat(parts) if parts else None


def reference_size(cfg: DictConfig) -> tuple[str, object, int]:
    """(split, dataset, number of reference images): what reference_features will use."""
    split = check_reference_settings(cfg)
    dataset = build_data(cfg, split, every_process=True)
    limit = cfg.eval.reference_num
    return split, dataset, len(dataset) if limit is None else min(limit, len(dataset))


def reference_features(cfg: DictConfig, extractor, device, state, size=None) -> dict | None:
    """{"features": [N, D], "mu": [D], "sigma": [D, D] (numpy float64), "split", "num",
    "cache": path, "cached": whether it was read from the cache} on the main process, None on
    the others. Every process calls it: without a cache, each extracts a shard of the images
    (a whole ImageNet split would keep one GPU busy while the others wait), and the main
    process gathers the features, computes the statistics and writes the cache. `size`:
    reference_size(cfg) when the caller has it already."""
    from safetensors.torch import load_file, save_file

    from diffuse_cli.distributed import broadcast_from_main, gather_exact, shard
    from diffuse_cli.evaluate.distances import feature_statistics

    split, dataset, num = size or reference_size(cfg)
    path = cache_path(cfg, split, num, extractor.key, capped=num < len(dataset))
    cached = broadcast_from_main(
        path.is_file()
    )  # one decision, even where the folder is not shared
    if cached:
        if not state.is_main_process:
            return None
        try:
            stored = load_file(path)
        except Exception as err:  # safetensors' own error type, or the file system's
            raise UserError(
                f"the reference cache '{path}' cannot be read ({err}); delete it and run the "
                "command again to recompute it"
            ) from err
    else:
        mine = shard(num, state.process_index, state.num_processes)
        progress = cfg.progress and state.is_main_process
        picked = evenly_spaced(len(dataset), num)  # eval.reference_num of a class-sorted folder
        images = Subset(dataset, [picked[i] for i in mine])
        features = compute_features(cfg, images, extractor, device, progress)
        share = {"index": torch.tensor(list(mine), dtype=torch.int64)}
        if features is not None:
            share["features"] = features
        gathered = gather_exact(share, num)
        if gathered is None:
            return None
        features = gathered["features"]
        stats = feature_statistics(features)
        stored = {
            "features": features.contiguous(),
            "mu": torch.from_numpy(stats["mu"]).contiguous(),
            "sigma": torch.from_numpy(stats["sigma"]).contiguous(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"dataset": cfg.data.name, "split": split, "num": str(num),
                "extractor": extractor.key}  # fmt: skip
        with replacing(path) as tmp:  # parallel jobs: a temporary file each
            save_file(stored, tmp, metadata=meta)
            give_plain_file_mode(tmp)  # a cache under data.root is shared
    return {
        "features": stored["features"],
        "mu": stored["mu"].numpy(),
        "sigma": stored["sigma"].numpy(),
        "split": split,
        "num": num,
        "cache": str(path),
        "cached": cached,
    }
