"""Feature extractors for sample-quality metrics, chosen with `eval.features`.

    inception   torch-fidelity's Inception-v3 (pool3 features, 1008 logits): FID, KID, IS
    builtin     the shapes data's own judge (builtin.py): fd_builtin, kd_builtin, is_builtin
    <path>      a classifier run (`diffuse train task=classifier`, classifier.noised=false for a
                clean-image one): pooled features and logits at t = 0: fd_classifier, ...

Every extractor takes 8-bit images as float in [-1, 1], NCHW, and gives `features` [B, D] and
class `logits` [B, K]. `name` goes into metric names: only Inception's distance is called FID;
with another extractor it is fd_<name>, so numbers from different feature spaces are never
mistaken for one another. `key` names the weights too, so cached reference statistics of one
extractor are never reused for another.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from diffuse_cli.errors import UserError
from diffuse_cli.evaluate.features.extractor import Extractor


def default_features(cfg: DictConfig) -> str:
    """`eval.features` when unset: the built-in judge for the embedded shapes at its size and
    channels, Inception for other images."""
    d = cfg.data
    return "builtin" if (d.name, d.image_size, d.channels) == ("shapes", 32, 3) else "inception"


def builtin_extractor(cfg: DictConfig, device: torch.device) -> Extractor:
    from diffuse_cli.evaluate.features.builtin import load_builtin_extractor, weights_digest
    from diffuse_cli.version import __version__

    d = cfg.data
    if (d.name, d.image_size, d.channels) != ("shapes", 32, 3):
        raise UserError(
            f"eval.features=builtin judges the embedded shapes data (32x32 RGB), but this run's "
            f"data is {d.name} at {d.image_size}x{d.image_size} with {d.channels} channels; "
            "use eval.features=inception"
        )
    judge = load_builtin_extractor(device)

    return Extractor(
        name="builtin",
        key=f"builtin-{weights_digest()}",
        implementation={
            "implementation": "diffuse builtin shapes judge",
            "version": __version__,
            "weights_sha256": weights_digest(),
        },  # fmt: skip
        extract=judge.features_and_logits,
    )


def classifier_extractor(cfg: DictConfig, device: torch.device, path: str) -> Extractor:
    """The pooled features (and logits) of a task=classifier run's image classifier, at t = 0."""
    from diffuse_cli.build import data_shape
    from diffuse_cli.loading import open_classifier_everywhere
    from diffuse_cli.train.checkpoint import MODEL
    from diffuse_cli.version import __version__

    clf_cfg, classifier, loaded = open_classifier_everywhere(path, device)
    if not hasattr(classifier, "features"):
        raise UserError(f"eval.features={path}: a classifier of 2-D points has no image features")
    if data_shape(clf_cfg) != data_shape(cfg):
        raise UserError(
            f"eval.features={path}: the classifier takes data of shape {data_shape(clf_cfg)}, "
            f"this run makes {data_shape(cfg)}"
        )
    weights = loaded.folder / MODEL
    digest = loaded.sha256[:8]  # of the bytes loaded, so the cache key names these weights
    classifier.requires_grad_(False)

    def extract(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        features = classifier.features(x, t)
        return features, classifier.classify(features)

    return Extractor(
        name="classifier",
        key=f"classifier-{digest}",
        implementation={
            "implementation": "diffuse task=classifier run",
            "version": __version__,
            "run": str(path),
            "weights": str(weights),
            "weights_sha256": digest,
        },
        extract=extract,
    )


def build_extractor(cfg: DictConfig, device: torch.device) -> Extractor:
    """The extractor `eval.features` names (see the module docstring)."""
    from diffuse_cli.evaluate.features.inception import inception_extractor

    choice = cfg.eval.features or default_features(cfg)
    if choice == "builtin":
        return builtin_extractor(cfg, device)
    if choice == "inception":
        return inception_extractor(cfg, device)
    if Path(choice).exists():
        return classifier_extractor(cfg, device, choice)
    raise UserError(
        f"eval.features={choice}: choose inception, builtin, or the folder of a classifier run"
    )
