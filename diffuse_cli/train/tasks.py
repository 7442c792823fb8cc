"""What the trainer optimizes: a denoiser (task=diffusion) or a noisy-image classifier
(task=classifier). The trainer owns the loop, the randomness, checkpoints and logging; a task
owns the network, its per-example loss and the statistics it reports."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from diffuse_cli.build import (
    build_classifier,
    build_diffusion,
    build_loss,
    build_model,
    is_edm,
    is_score_model,
)
from diffuse_cli.errors import UserError

TASKS = ("diffusion", "classifier")


def labelled_classes(cfg: DictConfig, dataset, purpose: str) -> int:
    """The dataset's number of classes; a clear error when it has no labels."""
    names = tuple(getattr(dataset, "class_names", ()))
    if len(names) < 2:
        raise UserError(
            f"data={cfg.data.name} has no class labels, which {purpose} needs; use labelled "
            "data (shapes, mnist, cifar10, or an image folder with one sub-folder per class)"
        )
    return len(names)


class DiffusionTask:
    """The denoiser trained with `cfg.loss`. A class-conditional network (model.num_classes)
    sees each example's label, replaced by the null label with probability
    trainer.label_dropout, so one network learns p(x | y) and p(x) (Ho & Salimans 2022)."""

    name = "diffusion"
    has_preview = True

    def __init__(self, cfg: DictConfig, dataset):
        self.cfg = cfg
        self.timestep_sampler = cfg.loss.timesteps  # the name of the trainer's
        self.diffusion = build_diffusion(cfg)
        self.loss = build_loss(cfg)
        self.num_classes = cfg.model.num_classes
        if self.num_classes:
            found = labelled_classes(cfg, dataset, f"model.num_classes={self.num_classes}")
            if found != self.num_classes:  # more: labels out of range; fewer: never trained
                raise UserError(
                    f"data={cfg.data.name} has {found} classes but model.num_classes="
                    f"{self.num_classes}; set model.num_classes={found}"
                )

    def build_model(self) -> torch.nn.Module:
        return build_model(self.cfg)

    def losses(self, model, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict:
        kwargs = {}
        if self.num_classes:
            p = self.cfg.trainer.label_dropout
            if p > 0:
                drop = torch.rand(y.shape, device=y.device) < p
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            kwargs = {"y": y}
        return self.loss(self.diffusion, model, x, t, model_kwargs=kwargs)

    def observe(self, t: torch.Tensor, out: dict) -> None:
        """Nothing beyond the loss to report."""

    def summary(self) -> dict:
        return {}


class ClassifierTask:
    """f_phi(y | x_t, t) by cross-entropy on x_t = q_sample(x0, t) at the trainer's timesteps
    (uniform), or on clean images with classifier.noised=false. Reports the accuracy over the
    batches since the last log line, overall and per timestep bucket.

    For schedule=edm the classifier sees what the denoiser's network sees, (c_in x, c_noise) with
    x = x0 + sigma n, at the denoiser's training noise levels (ln sigma ~ N(p_mean, p_std^2)),
    and its buckets are equally likely ranges of that distribution."""

    name = "classifier"
    has_preview = False
    timestep_sampler = "uniform"  # loss.* is the denoiser's: a classifier sees every t alike

    def __init__(self, cfg: DictConfig, dataset):
        self.cfg = cfg
        if is_score_model(cfg):
            raise UserError(
                "task=classifier trains the noisy classifier of classifier guidance, which "
                "NCSN runs (schedule=ncsn) do not have; train it with the DDPM schedule of the "
                "generator it will guide"
            )
        self.diffusion = build_diffusion(cfg)
        self.edm = is_edm(cfg)
        self.num_classes = labelled_classes(cfg, dataset, "task=classifier")
        self.noised = cfg.classifier.noised
        self.buckets = cfg.classifier.buckets if self.noised else 1
        if self.buckets < 1:
            raise UserError(f"classifier.buckets={self.buckets} must be >= 1")
        self._reset()

    def _reset(self) -> None:
        self.correct = torch.zeros(self.buckets, dtype=torch.float64)
        self.count = torch.zeros(self.buckets, dtype=torch.float64)

    def build_model(self) -> torch.nn.Module:
        return build_classifier(self.cfg, self.num_classes)

    def losses(self, model, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict:
        if self.noised and self.edm:
            x_in, t_in = self.diffusion.network_inputs(self.diffusion.q_sample(x, t), t)
        elif self.noised:
            x_in, t_in = self.diffusion.q_sample(x, t), self.diffusion.model_timesteps(t)
        else:
            x_in, t_in = x, torch.zeros_like(t)
        logits = model(x_in, t_in).float()
        correct = (logits.argmax(dim=-1) == y).float()
        return {"loss": F.cross_entropy(logits, y, reduction="none"), "correct": correct}

    def observe(self, t: torch.Tensor, out: dict) -> None:
        if self.edm:
            bucket = self.diffusion.bucket_of_sigma(t, self.buckets)
        else:
            bucket = (t.cpu() * self.buckets // self.diffusion.num_timesteps).clamp(
                max=self.buckets - 1
            )
        if not self.noised:
            bucket = torch.zeros_like(bucket)
        correct = out["correct"].detach().cpu().double()
        self.correct.index_add_(0, bucket, correct)
        self.count.index_add_(0, bucket, torch.ones_like(correct))

    def summary(self) -> dict:
        """{"accuracy": ..., "accuracy_t<lo>-<hi>": ... per bucket} since the last call."""
        row = {"accuracy": float(self.correct.sum() / self.count.sum().clamp(min=1))}
        if self.noised and self.edm:
            for b in range(self.buckets):
                if self.count[b] > 0:
                    row[f"accuracy_{sigma_range(self.diffusion, b, self.buckets)}"] = float(
                        self.correct[b] / self.count[b]
                    )
        elif self.noised:
            T = self.diffusion.num_timesteps
            for b in range(self.buckets):
                lo, hi = b * T // self.buckets, (b + 1) * T // self.buckets - 1
                if self.count[b] > 0:
                    row[f"accuracy_t{lo}-{hi}"] = float(self.correct[b] / self.count[b])
        self._reset()
        return row


def sigma_range(edm, bucket: int, buckets: int) -> str:
    """'sigma0.12-0.34': the noise levels of an equally likely range of edm's training sigmas."""
    lo, hi = (float(edm.sigma_at_quantile(q / buckets)) for q in (bucket, bucket + 1))
    return f"sigma{lo:.3g}-{hi:.3g}"


def make_task(cfg: DictConfig, dataset):
    if cfg.task == "diffusion":
        return DiffusionTask(cfg, dataset)
    if cfg.task == "classifier":
        return ClassifierTask(cfg, dataset)
    raise UserError(f"task={cfg.task!r} is not one of: {', '.join(TASKS)}")
