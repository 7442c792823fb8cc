"""How well guided samples show the class they were drawn for, judged by the built-in shapes
judge (diffuse_cli.evaluate.features.builtin: trained on the held-out split only, so it is not
the generator nor the guidance classifier).

`sample` draws `--num` samples of a class-conditional run for every setting of a grid and saves
them, with their labels and wall times, in one .npz; `judge` prints a Markdown table of the
judge's accuracy (predicted shape == the label asked for) and of the diversity that is left:
the per-class pixel standard deviation, the per-class entropy of the colour used (bits; the
data's 6 colours give 2.58), and the Frechet distance of the judge's features to 2000 training
images (fd_builtin, lower is closer to the data).

    python scripts/guidance_accuracy.py sample RUN CLASSIFIER OUT.npz [--num 500] [--grid guidance]
    python scripts/guidance_accuracy.py judge OUT.npz

Grids: `guidance` = {none, classifier guidance s = 1, 3, 10, classifier-free w = 1.5, 3, 5} x
{ddpm 100 steps, ddim 50 steps}; `steps` = unguided {ddpm, ddim, dpm_solver} x {5, 10, 20, 50,
100} steps.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SAMPLERS = {"ddpm-100": ["sampler=ddpm", "steps=100"], "ddim-50": ["sampler=ddim", "steps=50"]}
GUIDANCE = {
    "none": ["guidance=none"],
    "classifier-s1": ["guidance=classifier", "guidance.scale=1"],
    "classifier-s3": ["guidance=classifier", "guidance.scale=3"],
    "classifier-s10": ["guidance=classifier", "guidance.scale=10"],
    "cfg-w1.5": ["guidance=cfg", "guidance.scale=1.5"],
    "cfg-w3": ["guidance=cfg", "guidance.scale=3"],
    "cfg-w5": ["guidance=cfg", "guidance.scale=5"],
}


def grid(name: str) -> dict[str, list[str]]:
    if name == "guidance":
        return {f"{s}/{g}": [*so, *go] for s, so in SAMPLERS.items() for g, go in GUIDANCE.items()}
    return {
        f"{s}-{n}/none": [f"sampler={s}", f"steps={n}"]
        for s in ("ddpm", "ddim", "dpm_solver")
        for n in (5, 10, 20, 50, 100)
    }


def sample(args) -> None:
    import diffuse_cli as dc
    from diffuse_cli.generate import sample_command

    arrays = {}
    scratch = Path(tempfile.mkdtemp(prefix="guidance_accuracy_"))
    for key, overrides in grid(args.grid).items():
        cfg = dc.compose_config(
            [
                f"run_dir={args.run}",
                f"num_samples={args.num}",
                f"batch_size={args.batch_size}",
                "progress=false",
                f"guidance.classifier={args.classifier}",
                f"out_dir={scratch / key.replace('/', '_')}",
                *overrides,
            ],
            "sample",
        )
        start = time.perf_counter()
        out = sample_command(cfg)
        seconds = time.perf_counter() - start
        with np.load(out / "samples.npz") as npz:
            arrays[f"{key}/images"], arrays[f"{key}/labels"] = npz["arr_0"], npz["arr_1"]
        arrays[f"{key}/seconds"] = np.array(seconds)
        print(f"{key}: {seconds:.1f} s", flush=True)
    np.savez_compressed(args.out, **arrays)
    shutil.rmtree(scratch)


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance of Gaussians fitted to feature sets a [N, D] and b [M, D] (float64)."""
    a, b = a.double(), b.double()
    mu = (a.mean(0) - b.mean(0)).square().sum()
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(ca)
    root = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root @ cb @ root).clamp(min=0).sqrt().sum()
    return float(mu + ca.trace() + cb.trace() - 2 * cross)


def to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def judge(args) -> None:
    import diffuse_cli as dc
    from diffuse_cli.build import build_data
    from diffuse_cli.evaluate.features.builtin import load_builtin_extractor, shapes_targets

    judge_net = load_builtin_extractor()
    data = build_data(dc.compose_config(["data.num_train=2000"], "train"), "train")
    reference = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        ref_features = judge_net.features(reference)
    npz = np.load(args.npz)
    keys = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in npz.files))  # in sampling order
    print("| sampler | guidance | judge accuracy | pixel std | colour entropy (bits) "
          "| fd_builtin | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for key in keys:
        images, labels = npz[f"{key}/images"], torch.from_numpy(npz[f"{key}/labels"])
        x = to_unit(images)
        with torch.no_grad():
            features = judge_net.features(x)
            predicted = judge_net.heads(features)["shape"].argmax(1)
        accuracy = (predicted == labels).float().mean().item()
        colours = shapes_targets(torch.from_numpy(images).permute(0, 3, 1, 2))["colour"]
        stds, entropies = [], []
        for c in labels.unique():
            mine = labels == c
            stds.append(((x[mine] + 1) / 2).std(0).mean().item())
            counts = torch.bincount(colours[mine], minlength=6).double()
            p = counts[counts > 0] / counts.sum()
            entropies.append(float(-(p * p.log2()).sum()))
        sampler, guidance = key.split("/")
        print(
            f"| {sampler} | {guidance} | {accuracy:.3f} | {np.mean(stds):.3f} "
            f"| {np.mean(entropies):.2f} | {frechet(features, ref_features):.2f} "
            f"| {float(npz[f'{key}/seconds']):.1f} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("run")
    s.add_argument("classifier")
    s.add_argument("out")
    s.add_argument("--num", type=int, default=500)
    s.add_argument("--batch-size", type=int, default=500)
    s.add_argument("--grid", choices=("guidance", "steps"), default="guidance")
    j = sub.add_parser("judge")
    j.add_argument("npz")
    args = parser.parse_args()
    sample(args) if args.command == "sample" else judge(args)


if __name__ == "__main__":
    main()
