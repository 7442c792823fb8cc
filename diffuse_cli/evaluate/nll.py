"""Negative log-likelihood in bits/dim by the full T-step variational bound, and
`diffuse eval metrics=[nll]`.

For 8-bit data x0 (Ho et al. 2020, eq. 5 and sec. 3.3; Nichol & Dhariwal 2021, sec. 3.1):

    -log p(x0) <= L_T + sum_{t=1}^{T-1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, I))                       the prior term
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))     x_t ~ q(x_t | x0), one draw per t
    L_0     = -log p(x0 | x_1), the discretized Gaussian decoder

in bits per dimension. Every variance type gives a valid decoder p(x_{t-1} | x_t), fixed ones
included. The bound takes T model calls per batch; the CLI shards examples over processes and
seeds each example's noise by its index, so the result does not depend on batch size or
process count.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from diffuse_cli.build import build_data
from diffuse_cli.diffusion import quantize
from diffuse_cli.distributed import shard
from diffuse_cli.errors import UserError
from diffuse_cli.evaluate.loss_report import label_kwargs
from diffuse_cli.evaluate.output import write_json
from diffuse_cli.files import replacing
from diffuse_cli.models.modes import evaluating
from diffuse_cli.ranges import check_ranges, positive_or_null
from diffuse_cli.runs import variant_name
from diffuse_cli.samplers import PerSampleNoise, as_noise_source


@torch.no_grad()
def nll_bpd(
    model,
    diffusion,
    x0: torch.Tensor,
    generator=None,
    *,
    clip_denoised: bool = True,
    model_kwargs: dict | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The variational bound on -log p(x0) in bits/dim, every term of it, per example.

    Args:
        model: any callable model(x_t, timesteps, **model_kwargs) -> output, read by
            `diffusion`'s prediction and variance objects (e.g. [eps, v] for learned_range).
            An nn.Module runs in eval mode and is handed back in its own mode.
        diffusion: a GaussianDiffusion (respaced ones work too: their own T terms).
        x0: data on the 8-bit grid of [-1, 1] (see diffusion.quantize), [B, ...].
        generator: where the noise of x_t ~ q(x_t | x0) comes from: a torch.Generator, a
            PerSampleNoise (per-example seeds), a list of int seeds or None (the global RNG).
        clip_denoised: clip the predicted x0 to [-1, 1] (a valid model too; the default, as
            improved-diffusion's image_nll.py).
        model_kwargs: extra model arguments (e.g. class labels y).
        progress: show a tqdm bar over the T timesteps.

    Returns:
        {"total": [B], "prior": [B], "decoder": [B], "terms": [B, T]} in bits/dim, on x0's
        device: terms[:, t] is L_{t-1} for t > 0 and the decoder L_0 at t = 0, and
        total = prior + terms.sum(1).
    """
    if not hasattr(diffusion, "p_mean_variance"):
        raise UserError("nll_bpd needs a DDPM diffusion: a score model (schedule=ncsn) or an "
                        "EDM run (schedule=edm) has no discrete variational bound")  # fmt: skip
    batch, T = x0.shape[0], diffusion.num_timesteps
    noise = as_noise_source(generator, batch, x0.device)
    terms = torch.zeros(batch, T, device=x0.device)
    with evaluating(model):
        for i in tqdm(range(T - 1, -1, -1), desc="nll", disable=not progress, leave=False):
            t = torch.full((batch,), i, dtype=torch.int64, device=x0.device)
            x_t = diffusion.q_sample(x0, t, noise.randn_like(x0))
            out = diffusion.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs)
            terms[:, i] = diffusion.vlb_terms(x0, x_t, t, out["mean"], out["log_variance"])
    prior = diffusion.prior_bpd(x0).to(terms.dtype)
    total = prior + terms.double().sum(dim=1).to(terms.dtype)
    return {"total": total, "prior": prior, "decoder": terms[:, 0].clone(), "terms": terms}


def example_seed(seed: int, index: int) -> int:
    """The noise seed of held-out example `index`: independent of batching and sharding."""
    return (seed << 32) + index


def held_out_nll(cfg: DictConfig, model, diffusion, device, rank: int = 0, world: int = 1):
    """The bound on this process's shard of the first eval.nll_examples test examples.

    Returns CPU tensors {"index": [n], "total": [n], "prior": [n], "decoder": [n],
    "terms": [n, T]} for the examples of this shard.
    """
    ec = cfg.eval
    dataset = build_data(cfg, "test", every_process=True)
    num = len(dataset) if ec.nll_examples is None else min(ec.nll_examples, len(dataset))
    indices = shard(num, rank, world)
    loader = DataLoader(Subset(dataset, indices), batch_size=ec.batch_size, shuffle=False)
    parts, start = [], indices.start
    bar = tqdm(total=len(indices), desc="nll", unit="img", disable=not (cfg.progress and rank == 0))
    for x, y in loader:
        index = list(range(start, start + x.shape[0]))
        start += x.shape[0]
        noise = PerSampleNoise([example_seed(cfg.seed, i) for i in index], device)
        kwargs = label_kwargs(model, y, device)  # a conditional model: -log p(x | y)
        result = nll_bpd(
            model, diffusion, quantize(x).to(device), generator=noise, model_kwargs=kwargs
        )
        parts.append({k: v.cpu() for k, v in result.items()} | {"index": torch.tensor(index)})
        bar.update(x.shape[0])
    bar.close()
    T = diffusion.num_timesteps
    if not parts:
        empty = torch.zeros(0)
        return {"index": torch.zeros(0, dtype=torch.int64), "total": empty, "prior": empty,
                "decoder": empty, "terms": torch.zeros(0, T)}  # fmt: skip
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _stderr(values: torch.Tensor) -> float | None:
    n = values.numel()
    return float(values.double().std() / math.sqrt(n)) if n > 1 else None


def summarize(result: dict, seconds: float) -> dict:
    """Means and standard errors over images, and the per-timestep table."""
    terms = result["terms"].double()
    return {
        "num_examples": int(result["total"].numel()),
        "bpd": float(result["total"].double().mean()),
        "bpd_stderr": _stderr(result["total"]),
        "prior_bpd": float(result["prior"].double().mean()),
        "decoder_bpd": float(result["decoder"].double().mean()),
        "seconds": seconds,
        "terms": [
            {"t": t, "bpd": float(terms[:, t].mean()), "stderr": _stderr(terms[:, t])}
            for t in range(terms.shape[1])
        ],
    }


def plot_terms(report: dict, path: Path) -> None:
    """L_t against t on a log scale (the decoder term at t = 0 marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [row["t"] for row in report["terms"]]
    values = [row["bpd"] for row in report["terms"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(ts, values, lw=1)
    ax.plot([0], [values[0]], "o", label="decoder L_0")
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("L_t (bits/dim)")
    ax.set_title(f"{report['bpd']:.3f} bits/dim, {report['run_dir']} @ {report['checkpoint']}")
    ax.legend()
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def check_nll_settings(cfg: DictConfig) -> None:
    """UserError when the bound does not apply or eval.nll_examples is bad (checked by the
    command before anything runs)."""
    if cfg.data.image_size == 0:
        raise UserError(
            f"metrics=[nll] is the bits/dim of 8-bit images, and data={cfg.data.name} is not "
            "images; use metrics=[loss]"
        )
    check_ranges(cfg.eval, {"nll_examples": positive_or_null("all")}, "eval.")


def nll_metric(cfg: DictConfig, model, diffusion, device, header: dict, state) -> Path | None:
    """Run the bound on this process's shard, gather once, and (main process) write
    eval/nll.json and eval/nll_terms.png. Returns the JSON path on the main process."""
    from accelerate.utils import gather_object

    check_nll_settings(cfg)
    tick = time.perf_counter()
    mine = held_out_nll(cfg, model, diffusion, device, state.process_index, state.num_processes)
    shards = gather_object([mine])
    result = {k: torch.cat([s[k] for s in shards]) for k in mine}
    seconds = time.perf_counter() - tick
    if not state.is_main_process:
        return None
    report = {
        **header,
        "metric": "NLL upper bound in bits/dim: the full T-step variational bound",
        "num_timesteps": diffusion.num_timesteps,
        "num_processes": state.num_processes,
        **summarize(result, seconds),
    }
    out = Path(cfg.run_dir) / "eval"
    path = out / f"{variant_name(cfg, 'nll')}.json"
    write_json(report, path)
    plot = out / f"{variant_name(cfg, 'nll_terms')}.png"
    plot_terms(report, plot)
    stderr = report["bpd_stderr"]
    print(
        f"NLL <= {report['bpd']:.4f}"
        + (f" +- {stderr:.4f}" if stderr is not None else "")
        + f" bits/dim over {report['num_examples']} examples in {seconds:.1f} s; "
        f"wrote {path} and {plot}"
    )
    return path
