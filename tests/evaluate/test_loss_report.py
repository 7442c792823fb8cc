"""The held-out loss of `diffuse eval metrics=[loss]`: stratified timesteps and bucket weights."""

from __future__ import annotations

import pytest
import torch

from diffuse_cli.build import build_diffusion
from diffuse_cli.evaluate.loss_report import bucket_edges, held_out_loss, stratified_timesteps

T, BUCKETS = 15, 10  # buckets of 1 and 2 timesteps: widths [2, 1, 1, 2, 2, 1, 1, 2, 2, 1]
EDGES = bucket_edges(T, BUCKETS)
WIDE = {t for lo, hi in zip(EDGES, EDGES[1:], strict=False) if hi - lo == 2 for t in (lo, lo + 1)}


class OffsetInWideBuckets(torch.nn.Module):
    """Predicts eps = 3 at the timesteps of the two-step buckets and 0 elsewhere, so the
    per-example L_simple is about 1 + 9 = 10 there and 1 elsewhere."""

    def forward(self, x, t):
        wide = torch.tensor([int(s) in WIDE for s in t], dtype=x.dtype)
        return 3.0 * wide[:, None, None, None].expand_as(x)


def test_every_bucket_is_filled_when_the_batch_is_smaller_than_the_buckets():
    g = torch.Generator().manual_seed(0)
    edges = bucket_edges(T, BUCKETS)
    seen, ks = 0, []
    for _ in range(5):
        _, k = stratified_timesteps(4, edges, g, start=seen)
        seen += 4
        ks.append(k)
    assert torch.bincount(torch.cat(ks), minlength=BUCKETS).tolist() == [2] * BUCKETS


def test_the_overall_loss_weights_buckets_by_their_width(compose):
    """The uniform-t loss is (10 wide timesteps x 10 + 5 x 1) / 15 = 7; the plain mean over the
    buckets would give (5 x 10 + 5 x 1) / 10 = 5.5."""
    cfg = compose(
        [
            "schedule=cosine",
            f"schedule.num_timesteps={T}",
            f"eval.buckets={BUCKETS}",
            "eval.batch_size=4",
            "eval.num_batches=30",
            "progress=false",
        ],  # fmt: skip
        "eval",
    )
    report = held_out_loss(cfg, OffsetInWideBuckets(), build_diffusion(cfg), "cpu")
    assert [b["count"] for b in report["buckets"]] == [12] * BUCKETS  # 120 examples, batch 4
    assert report["loss"] == pytest.approx(7.0, abs=0.05)
    wide = [b["loss"] for b in report["buckets"] if b["t_max"] > b["t_min"]]
    assert wide == pytest.approx([10.0] * 5, abs=0.1)


def test_a_bucket_without_examples_reports_no_loss(compose):
    cfg = compose(
        [
            "schedule=cosine",
            f"schedule.num_timesteps={T}",
            f"eval.buckets={BUCKETS}",
            "eval.batch_size=4",
            "eval.num_batches=1",
            "progress=false",
        ],  # fmt: skip
        "eval",
    )
    report = held_out_loss(cfg, OffsetInWideBuckets(), build_diffusion(cfg), "cpu")
    assert [b["loss"] is None for b in report["buckets"]] == [False] * 4 + [True] * 6
    filled = report["buckets"][:4]  # widths 2, 1, 1, 2
    expected = sum((b["t_max"] - b["t_min"] + 1) * b["loss"] for b in filled) / 6
    assert report["loss"] == pytest.approx(expected)


def test_stratified_timesteps_are_uniform_inside_their_bucket():
    """Example i falls in bucket i mod 4 of T = 1000 and its t is uniform on [lo, hi): every t
    inside, the bucket's ends both drawn, the mean (lo + hi - 1) / 2 within 5 standard errors
    (a t pinned to the bucket's start would bias every bucket's loss)."""
    edges = bucket_edges(1000, 4)
    assert edges == [0, 250, 500, 750, 1000]
    t, k = stratified_timesteps(40_000, edges, torch.Generator().manual_seed(0), start=3)
    assert torch.equal(k, (3 + torch.arange(40_000)) % 4)
    for b, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False)):
        tb = t[k == b].double()
        assert len(tb) == 10_000
        assert lo <= tb.min() and tb.max() < hi
        assert (tb.min(), tb.max()) == (lo, hi - 1)  # each end has ~1 - e^-40 odds
        width = hi - lo
        std_err = ((width**2 - 1) / 12) ** 0.5 / len(tb) ** 0.5  # discrete uniform
        assert abs(tb.mean() - (lo + hi - 1) / 2) < 5 * std_err
