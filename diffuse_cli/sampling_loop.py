"""The seeded sampling loop of `diffuse sample` and of the sample-quality eval, and the guided
model both sample with.

Sample i starts from the noise of seed (seed, i) and takes its label from the same pair (as
NVlabs/edm's generate.py seeds by index), so a sample does not depend on the batch size or on
how many processes share the indices: each process draws its contiguous share
(`distributed.shard`) batch by batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from diffuse_cli.build import (
    build_diffusion,
    build_guidance,
    data_shape,
    is_edm,
    is_score_model,
    sample,
)
from diffuse_cli.errors import UserError
from diffuse_cli.loading import open_classifier_everywhere
from diffuse_cli.runs import differences, read_run_config
from diffuse_cli.samplers import NFECounter, PerSampleNoise
from diffuse_cli.sampling_labels import sample_labels
from diffuse_cli.train.checkpoint import LoadedWeights


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of run seed `seed`: (seed << 32) + index, so the samples of
    two run seeds never share one."""
    return (seed << 32) + index


def index_batches(indices: range, size: int) -> Iterator[range]:
    """`indices` in consecutive ranges of at most `size`."""
    for start in range(indices.start, indices.stop, size):
        yield range(start, min(start + size, indices.stop))


@dataclass
class GuidedModel:
    """What samples are drawn with: the model as cfg.guidance wraps it (counting its calls),
    the cond_fn of ancestral classifier guidance, and the classes labels are drawn from."""

    model: Callable  # an NFECounter around the guided model
    cond_fn: Callable | None
    num_classes: int | None  # None: no labels
    null_label: int | None  # the label of "no class" of a model trained with label dropout
    classifier_weights: LoadedWeights | None = None  # guidance=classifier: the weights that guided
    batches_drawn: int = 0

    def labels(self, cfg: DictConfig, indices: range) -> torch.Tensor | None:
        """The labels of samples `indices` (sampling_labels.sample_labels), or None."""
        return sample_labels(cfg, self.num_classes, indices, self.null_label)

    def evaluations_per_sample(self) -> int | None:
        """Network evaluations per sample so far: one call evaluates a whole batch."""
        return self.model.calls // self.batches_drawn if self.batches_drawn else None


def guided_model(cfg: DictConfig, model, diffusion, device) -> GuidedModel:
    """The GuidedModel of cfg.guidance and cfg.class_labels for a run's `model`: loads and
    checks the guidance classifier, and refuses labels or guidance the run cannot take before
    anything is drawn."""
    classifier = classifier_weights = None
    if cfg.guidance.name == "classifier":
        classifier, classifier_weights = guidance_classifier(cfg, device)
    num_classes, null_label = class_conditioning(cfg, model, classifier)
    sample_labels(cfg, num_classes, range(0), null_label)  # refuses class_labels it cannot use
    guided, cond_fn = build_guidance(cfg, model, diffusion, classifier)
    return GuidedModel(NFECounter(guided), cond_fn, num_classes, null_label, classifier_weights)


def seeded_batches(
    cfg: DictConfig,
    guided: GuidedModel,
    diffusion,
    device: torch.device,
    indices: range,
    progress: bool = False,
) -> Iterator[tuple[range, torch.Tensor]]:
    """(chunk, samples number `chunk` on `device`) for `indices` in batches of cfg.batch_size,
    sample i from the noise of sample_seed(cfg.seed, i) with its label as model input y.
    `progress`: the sampler's bar over its steps."""
    shape = data_shape(cfg)
    for chunk in index_batches(indices, cfg.batch_size):
        noise = PerSampleNoise([sample_seed(cfg.seed, i) for i in chunk], device)
        x_T = noise.randn(shape)
        labels = guided.labels(cfg, chunk)
        kwargs = {} if labels is None else {"y": labels.to(device)}
        model, cond_fn = guided.model, guided.cond_fn
        x = sample(cfg, model, diffusion, x_T, noise, kwargs, progress=progress, cond_fn=cond_fn)
        guided.batches_drawn += 1
        yield chunk, x


def guidance_classifier(cfg: DictConfig, device: torch.device):
    """(classifier, its LoadedWeights) of guidance=classifier, checked against the generator's
    run: trained for the same noise schedule and the same data shape."""
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


def class_conditioning(cfg: DictConfig, model, classifier) -> tuple[int | None, int | None]:
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
