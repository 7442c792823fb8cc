"""`diffuse eval metrics=[loss]`: the training loss on held-out data, overall and per timestep
bucket.

Timesteps are stratified: the i-th example evaluated (counted across batches) is noised to a t
drawn uniformly inside bucket i mod K, so every bucket gets the same number of examples (give or
take one), whatever the batch size, and the overall number (the bucket means weighted by their
widths in timesteps) estimates the uniform-t loss with less variance.

An EDM run (schedule=edm) has no timesteps: its buckets are K equally likely ranges of the
training distribution ln sigma ~ N(p_mean, p_std^2), example i drawn in bucket i mod K at a
quantile uniform inside it, so the mean of the bucket means estimates the training loss
E_sigma[lambda(sigma) ||D - x0||^2] itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from diffuse_cli.build import build_data, build_loss
from diffuse_cli.diffusion import EDMDiffusion
from diffuse_cli.evaluate.output import write_json
from diffuse_cli.files import replacing
from diffuse_cli.runs import variant_name


def bucket_edges(num_timesteps: int, buckets: int) -> list[int]:
    return [round(i * num_timesteps / buckets) for i in range(buckets + 1)]


def stratified_timesteps(batch: int, edges: list[int], generator: torch.Generator, start: int = 0):
    """(t [B], bucket index [B]) for examples start .. start + B - 1: example i in bucket
    i mod K, t uniform inside it."""
    k = (start + torch.arange(batch)) % (len(edges) - 1)
    lo = torch.tensor(edges[:-1])[k]
    hi = torch.tensor(edges[1:])[k]
    t = lo + (torch.rand(batch, generator=generator) * (hi - lo)).long()
    return t, k


@torch.no_grad()
def label_kwargs(model, y: torch.Tensor, device) -> dict:
    """{"y": labels} for a class-conditional network (its conditional loss), else {}."""
    return {"y": y.to(device)} if getattr(model, "num_classes", None) else {}


def stratified_sigmas(batch: int, edm, buckets: int, generator: torch.Generator, start: int = 0):
    """(sigma [B], bucket index [B]) for examples start .. start + B - 1: example i in bucket
    i mod K, at a quantile uniform inside the bucket's share of the training distribution."""
    k = (start + torch.arange(batch)) % buckets
    u = (k + torch.rand(batch, generator=generator, dtype=torch.float64)) / buckets
    return edm.sigma_at_quantile(u.clamp(1e-12, 1 - 1e-12)).float(), k


@torch.no_grad()  # no autograd graph: the pass only measures
def held_out_loss(cfg: DictConfig, model, diffusion, device) -> dict:
    ec = cfg.eval
    dataset = build_data(cfg, "test")
    edm = isinstance(diffusion, EDMDiffusion)
    levels = ec.buckets if edm else diffusion.num_timesteps
    buckets = min(ec.buckets, levels)  # an NCSN has only L levels
    edges = bucket_edges(levels, buckets)
    sums = torch.zeros(buckets, dtype=torch.float64)
    counts = torch.zeros(buckets, dtype=torch.float64)
    g = torch.Generator().manual_seed(cfg.seed)
    loss_fn = build_loss(cfg)
    loader = DataLoader(dataset, batch_size=ec.batch_size, shuffle=False)
    total = min(ec.num_batches, len(loader)) * ec.repeats
    bar = tqdm(total=total, desc="eval", disable=not cfg.progress)
    seen = 0
    for _ in range(ec.repeats):
        for i, (x, y) in enumerate(loader):
            if i >= ec.num_batches:
                break
            if edm:
                t, k = stratified_sigmas(x.shape[0], diffusion, buckets, g, start=seen)
            else:
                t, k = stratified_timesteps(x.shape[0], edges, g, start=seen)
            seen += x.shape[0]
            noise = torch.randn(x.shape, generator=g)
            losses = loss_fn(
                diffusion,
                model,
                x.to(device),
                t.to(device),
                noise=noise.to(device),
                model_kwargs=label_kwargs(model, y, device),
            )
            losses = losses["loss"]
            sums.index_add_(0, k, losses.double().cpu())
            counts.index_add_(0, k, torch.ones_like(losses, dtype=torch.float64).cpu())
            bar.update(1)
    bar.close()
    per_bucket = sums / counts.clamp(min=1)
    filled = counts > 0  # all of them unless fewer examples than buckets were evaluated
    widths = torch.tensor(edges[1:], dtype=torch.float64) - torch.tensor(edges[:-1])
    rows = [
        {
            "t_min": edges[b],
            "t_max": edges[b + 1] - 1,
            "loss": float(per_bucket[b]) if filled[b] else None,
            "count": int(counts[b]),
        }
        for b in range(buckets)
    ]
    sigmas = getattr(diffusion, "sigmas", None)  # NCSN: index 0 is the largest level
    if edm:  # bucket b: quantiles b / K to (b + 1) / K of the training sigmas
        for b, row in enumerate(rows):
            del row["t_min"], row["t_max"]
            row["sigma_min"], row["sigma_median"], row["sigma_max"] = (
                float(diffusion.sigma_at_quantile(q / buckets)) for q in (b, b + 0.5, b + 1)
            )
    elif sigmas is not None:
        for row in rows:
            row["sigma_max"] = float(sigmas[row["t_min"]])
            row["sigma_min"] = float(sigmas[row["t_max"]])
    return {
        "loss": float((per_bucket * widths)[filled].sum() / widths[filled].sum()),
        "num_examples": int(counts.sum()),
        "buckets": rows,
    }


def plot_buckets(report: dict, path: Path) -> None:
    """Loss against timestep, one point per bucket, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [b for b in report["buckets"] if b["loss"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    edm = "t_min" not in report["buckets"][0]
    if edm:  # the bucket's median sigma, on a log axis (the outer buckets reach 0 and infinity)
        middles = [b["sigma_median"] for b in shown]
        ax.set_xscale("log")
    else:
        middles = [(b["t_min"] + b["t_max"]) / 2 for b in shown]
    ax.plot(middles, [b["loss"] for b in shown], marker="o")
    ax.set_yscale("log")
    ncsn = "sigma_max" in report["buckets"][0]
    ax.set_xlabel(
        "sigma (equally likely training ranges)"
        if edm
        else "noise level index i (0: the largest sigma)"
        if ncsn
        else "timestep t"
    )
    ax.set_ylabel(report["metric"])
    ax.set_title(f"{report['run_dir']} @ {report['checkpoint']}")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def loss_metric(cfg: DictConfig, model, diffusion, device, header: dict, state) -> Path | None:
    """The held-out loss report, eval/loss.json and eval/loss_by_timestep.png; computed by the
    main process only (it is cheap). Returns the JSON path on the main process."""
    if not state.is_main_process:
        return None
    weighting = cfg.loss.weighting
    weights = "" if weighting == "uniform" else f", {weighting} weights"
    report = {
        **header,
        "metric": "held-out EDM loss lambda(sigma) ||D - x0||^2"
        if isinstance(diffusion, EDMDiffusion)
        else f"held-out L_{cfg.loss.name} ({cfg.prediction.name} target{weights})",
        **held_out_loss(cfg, model, diffusion, device),
    }
    out = Path(cfg.run_dir) / "eval"
    path = out / f"{variant_name(cfg, 'loss')}.json"
    write_json(report, path)
    plot = out / f"{variant_name(cfg, 'loss_by_timestep')}.png"
    plot_buckets(report, plot)
    print(
        f"held-out loss {report['loss']:.5f} over {report['num_examples']} examples; "
        f"wrote {path} and {plot}"
    )
    return path
