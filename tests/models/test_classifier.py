"""The noisy classifier's attention pooling (ADM's AttentionPool2d) and its heads."""

import pytest
import torch
from model_helpers import TINY_UNET


def _reference_attention_pool(pool, x):
    """ADM's attention pooling, written out: tokens = [spatial mean, x_1..x_HW] + position;
    q, k, v = the channel thirds of the qkv 1x1 convolution, split into heads of d channels;
    output = per head softmax(q_mean . k / sqrt(d)) v, the mean token's row."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    tokens = torch.cat([flat.mean(dim=-1, keepdim=True), flat], dim=-1) + pool.position[None]
    qkv = torch.einsum("oc,bcn->bon", pool.qkv.weight[:, :, 0], tokens) + pool.qkv.bias[:, None]
    q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    heads = pool.num_heads
    d = c // heads
    out = []
    for i in range(heads):
        part = slice(i * d, (i + 1) * d)
        logits = torch.einsum("bd,bdn->bn", q[:, part, 0], k[:, part]) / d**0.5
        out.append(torch.einsum("bn,bdn->bd", torch.softmax(logits, dim=-1), v[:, part]))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_attention_pool_is_the_mean_tokens_attention_over_all_positions(heads):
    from diffuse_cli.models.classifier import AttentionPool

    torch.manual_seed(0)
    pool = AttentionPool(8, 3 * 3, heads)
    x = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(pool(x), _reference_attention_pool(pool, x), rtol=0, atol=1e-6)


def test_classifier_pool_heads_follow_num_head_channels_or_num_heads():
    from diffuse_cli.models import EncoderClassifier

    kwargs = dict(TINY_UNET, image_size=16)  # encoder width 32
    assert EncoderClassifier(4, **kwargs, num_head_channels=8).pool.num_heads == 32 // 8
    assert EncoderClassifier(4, **kwargs, num_heads=2).pool.num_heads == 2
    assert EncoderClassifier(4, **kwargs).pool.num_heads == 1
