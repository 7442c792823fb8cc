"""The UNet (DDPM / improved DDPM / ADM): shapes, refusals, the ADM options and the architecture
as published, layer by layer."""

import pytest
import torch
from model_helpers import SMALL, TINY_UNET, check_dropout, inputs, perturb

from diffuse_cli.models import UNet, timestep_embedding

DDPM_CIFAR10 = dict(
    in_channels=3,
    out_channels=3,
    model_channels=128,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=2,
    attention_resolutions=(16,),
    dropout=0.1,
    num_heads=1,
    image_size=32,
)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_ddpm_cifar10_unet_has_the_published_35_7m_parameters():
    with torch.device("meta"):
        model = UNet(**DDPM_CIFAR10)
    n = count(model)
    # The paper reports 35.7M (rounded); improved-diffusion and diffusers count 35,746,307 for
    # the same architecture, 0.13% above 35.7e6, so the check is on the rounded figure.
    assert round(n / 1e6, 1) == 35.7
    assert n == 35_746_307
    assert next(model.parameters()).device.type == "meta"


def test_builds_on_the_default_device():
    model = UNet(**SMALL)
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, size",
    [
        (dict(SMALL), 32),
        (dict(SMALL, out_channels=6), 32),  # learned variance doubles the output channels
        (
            dict(SMALL, in_channels=1, out_channels=1, image_size=16, attention_resolutions=(4, 8)),
            16,
        ),
        (
            dict(
                model_channels=16,
                channel_mult=(1, 2, 2, 4),
                attention_resolutions=(32, 16, 8),
                num_heads=4,
                image_size=64,
            ),
            64,
        ),
        (dict(SMALL, resblock_updown=True, use_scale_shift_norm=True, num_head_channels=16), 32),
        (dict(SMALL, model_channels=24, dropout=0.1), 32),  # width not a multiple of 32
    ],
)
def test_output_shape(kwargs, size):
    kwargs.setdefault("image_size", size)
    model = UNet(**kwargs)
    x, t = inputs(channels=kwargs.get("in_channels", 3), size=size)
    out = model(x, t)
    assert out.shape == (2, kwargs.get("out_channels", 3), size, size)


def test_untrained_unet_outputs_zero_but_gradients_flow():
    model = UNet(**SMALL)
    x, t = inputs()
    out = model(x, t)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()  # the zero output conv gets a gradient, and after one step so does all
    assert model.out[-1].weight.grad.abs().sum() > 0


def test_gradients_reach_every_parameter_once_weights_move():
    model = UNet(**SMALL, num_classes=3)
    perturb(model)
    x, t = inputs()
    model(x, t, torch.tensor([0, 2])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_class_labels_change_the_output():
    model = UNet(**SMALL, num_classes=4).eval()
    perturb(model)
    x, t = inputs()
    with torch.no_grad():
        a = model(x, t, torch.tensor([0, 1]))
        b = model(x, t, torch.tensor([2, 3]))
    assert not torch.allclose(a, b)


def test_timestep_changes_the_output():
    model = UNet(**SMALL).eval()
    perturb(model)
    x, _ = inputs()
    with torch.no_grad():
        assert not torch.allclose(
            model(x, torch.tensor([0, 0])), model(x, torch.tensor([500, 500]))
        )


def test_labels_must_match_conditioning():
    x, t = inputs()
    with pytest.raises(ValueError, match="class-conditional"):
        UNet(**SMALL, num_classes=3)(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        UNet(**SMALL)(x, t, torch.tensor([0, 1]))


def test_bad_geometry_is_rejected_with_the_valid_choices():
    with pytest.raises(ValueError, match=r"valid sizes are \[32, 16, 8\]"):
        UNet(**dict(SMALL, attention_resolutions=(4,)))
    with pytest.raises(ValueError, match="divisible"):
        UNet(**dict(SMALL, image_size=30))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(num_res_blocks=-1), "num_res_blocks must be >= 0"),  # built, gave 8x8 outputs
        (dict(model_channels=0), "must be >= 1"),
        (dict(channel_mult=(1, 0, 2)), "must be >= 1"),
        (dict(channel_mult=(), attention_resolutions=()), "at least one entry"),
        (dict(num_classes=0), "num_classes must be null"),  # was quietly unconditional
    ],
)
def test_sizes_that_build_no_working_network_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        UNet(**dict(SMALL, **change))


def test_zero_res_blocks_per_level_is_a_working_network():
    x, t = inputs()
    assert UNet(**dict(SMALL, num_res_blocks=0))(x, t).shape == x.shape


# ---- the ADM options: AdaGN, BigGAN up/down, rescaled residuals, heads, checkpointing, NHWC ----


def _capture(module: torch.nn.Module, store: dict, key: str, output: bool = True):
    def hook(_mod, args, out=None):
        store[key] = (out if output else args[0]).detach().clone()

    if output:
        return module.register_forward_hook(hook)
    return module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("scale_shift", [False, True])
def test_resblock_applies_the_embedding_as_published(scale_shift):
    """DDPM adds the projected embedding before the second GroupNorm; AdaGN computes
    GroupNorm(h) * (1 + scale) + shift with (scale, shift) projected from the embedding."""
    from diffuse_cli.models.unet import ResBlock

    block = ResBlock(8, 8, emb_channels=6, scale_shift=scale_shift).eval()
    perturb(block)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    seen: dict = {}
    hooks = [
        _capture(block.in_conv, seen, "conv"),
        _capture(block.out_norm, seen, "norm_in", output=False),
        _capture(block.out_norm, seen, "norm_out"),
        _capture(block.dropout, seen, "act", output=False),
    ]
    with torch.no_grad():
        block(x, emb)
        e = block.emb_proj(torch.nn.functional.silu(emb))[:, :, None, None]
        if scale_shift:
            scale, shift = e.chunk(2, dim=1)
            assert torch.allclose(seen["norm_in"], seen["conv"])
            expected = seen["norm_out"] * (1 + scale) + shift
        else:
            assert torch.allclose(seen["norm_in"], seen["conv"] + e)
            expected = seen["norm_out"]
        assert torch.allclose(seen["act"], torch.nn.functional.silu(expected), atol=1e-6)
    for h in hooks:
        h.remove()


def test_adagn_scale_and_shift_from_the_embedding_change_the_output():
    from diffuse_cli.models.unet import ResBlock

    block = ResBlock(8, 8, emb_channels=6, scale_shift=True).eval()
    perturb(block)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    with torch.no_grad():
        before = block(x, emb)
        block.emb_proj.bias[:8] += 0.5  # the scale half only
        after_scale = block(x, emb)
        block.emb_proj.bias[8:] += 0.5  # then the shift half
        after_shift = block(x, emb)
    assert not torch.allclose(before, after_scale)
    assert not torch.allclose(after_scale, after_shift)


@pytest.mark.parametrize("biggan", [False, True])
def test_down_and_upsampling_halve_and_double_resolution_in_both_modes(biggan):
    from diffuse_cli.models.unet import Downsample, ResBlock, Upsample

    x, emb = torch.randn(2, 8, 16, 16), torch.randn(2, 6)
    if biggan:
        down = ResBlock(8, 8, 6, down=True)(x, emb)
        up = ResBlock(8, 8, 6, up=True)(x, emb)
    else:
        down, up = Downsample(8)(x), Upsample(8)(x)
    assert down.shape == (2, 8, 8, 8) and up.shape == (2, 8, 32, 32)


@pytest.mark.parametrize("size", [4, 8, 16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsampling_convolution_is_a_3x3_convolution_of_the_nearest_upsampled_map(
    size, channels_last
):
    """Upsample and a BigGAN up-block compute conv3x3(nearest 2x upsampling of x) directly on
    small maps and as a folded stride-2 transposed convolution on larger ones: both must give
    the published definition's values and gradients, also at the image border."""
    import torch.nn.functional as F

    from diffuse_cli.models.unet import Upsample

    torch.manual_seed(0)
    up = Upsample(6).double()  # float64, so rounding cannot hide a wrong tap
    x = torch.randn(2, 6, size, size, dtype=torch.float64, requires_grad=True)
    if channels_last:
        up = up.to(memory_format=torch.channels_last)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    ours = up(x)
    direct = F.conv2d(
        x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3),
        up.conv.weight,
        up.conv.bias,
        padding=1,
    )
    assert ours.shape == direct.shape == (2, 6, 2 * size, 2 * size)
    torch.testing.assert_close(ours, direct, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(ours)
    wanted = torch.autograd.grad(direct, (x, up.conv.weight, up.conv.bias), grad_out)
    got = torch.autograd.grad(ours, (x, up.conv.weight, up.conv.bias), grad_out)
    for g, w in zip(got, wanted, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [8, 16])
def test_upsampling_convolution_under_bf16_autocast_matches_the_float32_definition(size):
    """Under autocast the folded form is used from 16x16 on, the direct one below: both must
    stay within bf16 rounding of the float32 result."""
    import torch.nn.functional as F

    from diffuse_cli.models.unet import Upsample

    torch.manual_seed(0)
    up, x = Upsample(16), torch.randn(2, 16, size, size)
    with torch.no_grad():
        wanted = F.conv2d(
            F.interpolate(x, scale_factor=2.0), up.conv.weight, up.conv.bias, padding=1
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = up(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(
        got.float(), wanted, rtol=0.05, atol=0.05 * wanted.abs().max().item()
    )


def test_biggan_up_block_equals_upsampling_before_its_first_convolution():
    import torch.nn.functional as F

    from diffuse_cli.models.unet import ResBlock

    torch.manual_seed(0)
    block = ResBlock(8, 8, 6, up=True).eval().double()
    perturb(block)
    x, emb = torch.randn(2, 8, 8, 8, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    h = block.in_conv(F.interpolate(F.silu(block.in_norm(x)), scale_factor=2.0, mode="nearest"))
    h = block.out_norm(h + block.emb_proj(F.silu(emb))[:, :, None, None])
    wanted = up + block.out_conv(F.silu(h))
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), wanted, rtol=1e-12, atol=1e-12)


def test_resblock_updown_swaps_the_resampling_layers_for_residual_blocks():
    from diffuse_cli.models.unet import Downsample, ResBlock, Upsample

    def kinds(model):
        return {type(m).__name__ for m in model.modules() if isinstance(m, (Downsample, Upsample))}

    plain, biggan = UNet(**SMALL), UNet(**SMALL, resblock_updown=True)
    assert kinds(plain) == {"Downsample", "Upsample"} and kinds(biggan) == set()
    resampling = [
        m
        for m in biggan.modules()
        if isinstance(m, ResBlock) and type(m.resample).__name__ != "Identity"
    ]
    assert len(resampling) == 2 * (len(SMALL["channel_mult"]) - 1)
    assert count(biggan) > count(plain)  # a residual block has more weights than one convolution


def test_residual_rescale_divides_every_residual_sum_by_sqrt2():
    from diffuse_cli.models.unet import AttentionBlock, ResBlock

    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    for make in (
        lambda r: ResBlock(8, 16, 6, rescale=r),
        lambda r: AttentionBlock(8, 2, rescale=r),
    ):
        plain, rescaled = make(False).eval(), make(True).eval()
        perturb(plain)
        rescaled.load_state_dict(plain.state_dict())
        args = (x, emb) if isinstance(plain, ResBlock) else (x,)
        with torch.no_grad():
            assert torch.allclose(rescaled(*args), plain(*args) / 2**0.5, atol=1e-6)


def test_attention_is_softmax_attention_of_its_1x1_convolutions():
    """The block computes x + proj(softmax(q k^T / sqrt(d)) v) per head, with q, k, v the
    channel thirds of the qkv 1x1 convolution, in either memory format."""
    from diffuse_cli.models.unet import AttentionBlock

    x = torch.randn(2, 8, 4, 4)
    for heads in (1, 2):
        block = AttentionBlock(8, heads).eval()
        perturb(block)
        qkv = block.qkv(block.norm(x)).reshape(2, 3, heads, 8 // heads, 16)
        q, k, v = qkv.unbind(1)  # [B, heads, d, HW]
        weights = torch.softmax(q.transpose(-1, -2) @ k / (8 // heads) ** 0.5, dim=-1)
        expected = x + block.proj((v @ weights.transpose(-1, -2)).reshape(2, 8, 4, 4))
        with torch.no_grad():
            assert torch.allclose(block(x), expected, atol=1e-5)
            block.to(memory_format=torch.channels_last)
            got = block(x.contiguous(memory_format=torch.channels_last))
            assert torch.allclose(got, expected, atol=1e-5)


def test_heads_from_channels_per_head():
    from diffuse_cli.models.unet import AttentionBlock

    assert AttentionBlock(256, num_heads=4, num_head_channels=64).num_heads == 4
    assert AttentionBlock(576, num_head_channels=64).num_heads == 9
    with pytest.raises(ValueError, match="heads of 64"):
        AttentionBlock(96, num_head_channels=64)


def _loss_and_grads(model, seed=0):
    x, t = inputs()
    torch.manual_seed(seed)  # the same dropout masks
    model.zero_grad()
    out = model(x, t, torch.tensor([0, 1]))
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("option", ["use_checkpoint", "channels_last"])
def test_checkpointing_and_channels_last_do_not_change_the_computation(option):
    # Checkpointing replays the same dropout masks; in NHWC the same seed draws the mask in
    # another element order, so channels_last is compared without dropout.
    dropout = 0.1 if option == "use_checkpoint" else 0.0
    kwargs = dict(
        SMALL, num_classes=2, dropout=dropout, resblock_updown=True, use_scale_shift_norm=True
    )
    base = UNet(**kwargs).train()
    perturb(base)
    other = UNet(**kwargs, **{option: True}).train()
    other.load_state_dict(base.state_dict())
    out_a, grads_a = _loss_and_grads(base)
    out_b, grads_b = _loss_and_grads(other)
    assert torch.allclose(out_a, out_b, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads_a, grads_b, strict=True))
    assert other.state_dict().keys() == base.state_dict().keys()
    if option == "channels_last":
        conv = other.input_blocks[0][0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last)


# ---- architecture as published: heads, rescaling, embedding, dropout, layer order ----


def _attention_blocks(model):
    from diffuse_cli.models.unet import AttentionBlock

    return [m for m in model.modules() if isinstance(m, AttentionBlock)]


def test_unet_attention_heads_follow_num_heads_and_num_head_channels():
    """The UNet hands its num_heads / num_head_channels to every attention block, the middle
    one included: fixed channels per head (ADM) gives C/16 heads at a C-channel level."""
    kwargs = dict(
        model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(32, 16)
    )
    by_channels = _attention_blocks(UNet(**kwargs, num_head_channels=16))
    by_count = _attention_blocks(UNet(**kwargs, num_heads=2))
    # input: 1 per level; middle: 1; output: 2 per level
    assert len(by_channels) == len(by_count) == 2 + 1 + 4
    widths = [b.qkv.in_channels for b in by_channels]
    assert sorted(set(widths)) == [32, 64]
    assert [b.num_heads for b in by_channels] == [c // 16 for c in widths]
    assert [b.num_heads for b in by_count] == [2] * len(by_count)


def test_residual_rescale_reaches_every_block_of_the_unet():
    """With residual_rescale every ResBlock of the UNet (plain, BigGAN up and down, with and
    without a 1x1 skip convolution) returns (skip(x) + h) / sqrt(2), h being its residual
    branch, and every attention block scales by 1/sqrt(2); without it the scales are 1."""
    from diffuse_cli.models.unet import ResBlock

    kwargs = dict(TINY_UNET, image_size=16, resblock_updown=True)
    assert {b.skip_scale for b in _attention_blocks(UNet(**kwargs))} == {1.0}
    model = UNet(**kwargs, residual_rescale=True).eval()
    perturb(model)
    assert [b.skip_scale for b in _attention_blocks(model)] == pytest.approx([2**-0.5] * 4)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    seen: dict = {}
    hooks = []
    for i, block in enumerate(blocks):
        hooks.append(_capture(block, seen, f"in{i}", output=False))
        hooks.append(_capture(block.out_conv, seen, f"h{i}"))
        hooks.append(_capture(block, seen, f"out{i}"))
    x, t = inputs(size=16)
    with torch.no_grad():
        model(x, t)
        for i, block in enumerate(blocks):
            skip = block.skip(block.resample(seen[f"in{i}"]))
            expected = (skip + seen[f"h{i}"]) / 2**0.5
            torch.testing.assert_close(seen[f"out{i}"], expected, rtol=1e-5, atol=1e-6)
    for h in hooks:
        h.remove()
    assert any(b.up for b in blocks) and any(
        not isinstance(b.skip, torch.nn.Identity) for b in blocks
    )


def test_unet_dropout_draws_fresh_masks_in_training_and_is_off_in_eval():
    """Dropout in the residual blocks (DDPM: before the last convolution) is random in train
    mode and reproducible from the seed; eval mode is deterministic and equals the network
    without dropout."""
    kwargs = dict(TINY_UNET, image_size=16)
    model = UNet(**kwargs, dropout=0.5)
    perturb(model)  # the zero-initialised last convolutions would hide the masks
    check_dropout(model, UNet(**kwargs), *inputs(size=16))


def test_middle_block_is_resblock_attention_resblock():
    from diffuse_cli.models.unet import AttentionBlock, ResBlock

    model = UNet(**TINY_UNET, image_size=16)
    assert [type(m) for m in model.middle_block] == [ResBlock, AttentionBlock, ResBlock]


def test_biggan_down_block_equals_average_pooling_before_its_first_convolution():
    """A BigGAN down-block (ADM's resblock_updown) average-pools both paths 2x2 without
    parameters: skip = avgpool(x), and the residual branch pools silu(norm(x)) before its
    first convolution."""
    import torch.nn.functional as F

    from diffuse_cli.models.unet import ResBlock

    torch.manual_seed(0)
    block = ResBlock(8, 8, 6, down=True).eval().double()
    perturb(block)
    x, emb = torch.randn(2, 8, 8, 8, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    h = block.in_conv(F.avg_pool2d(F.silu(block.in_norm(x)), 2))
    h = block.out_norm(h + block.emb_proj(F.silu(emb))[:, :, None, None])
    wanted = F.avg_pool2d(x, 2) + block.out_conv(F.silu(h))
    with torch.no_grad():
        torch.testing.assert_close(block(x, emb), wanted, rtol=1e-12, atol=1e-12)


def test_unet_down_blocks_are_the_biggan_blocks_when_resblock_updown():
    """The UNet's BigGAN down-blocks pool by averaging, like the block tested above."""
    from diffuse_cli.models.unet import ResBlock

    model = UNet(**TINY_UNET, image_size=16, resblock_updown=True)
    down = [m for m in model.input_blocks.modules() if isinstance(m, ResBlock) and not m.up]
    pools = [type(m.resample) for m in down if not isinstance(m.resample, torch.nn.Identity)]
    assert pools == [torch.nn.AvgPool2d] * (len(TINY_UNET["channel_mult"]) - 1)


def test_embedding_is_linear_silu_linear_of_the_sinusoid_plus_the_label_row():
    """DDPM's time embedding MLP: Linear(C, 4C), SiLU, Linear(4C, 4C) on the sinusoidal
    embedding of width C = model_channels; a label adds its embedding row."""
    import torch.nn.functional as F

    model = UNet(**TINY_UNET, image_size=16, num_classes=3)
    t, y = torch.tensor([0, 5, 999]), torch.tensor([0, 2, 3])
    l1, l2 = model.time_embed[0], model.time_embed[2]
    sinusoid = timestep_embedding(t, 16)
    wanted = F.linear(F.silu(F.linear(sinusoid, l1.weight, l1.bias)), l2.weight, l2.bias)
    wanted = wanted + model.label_embed.weight[y]
    with torch.no_grad():
        torch.testing.assert_close(model.embed(t, y), wanted)
    assert (l1.in_features, l1.out_features, l2.out_features) == (16, 64, 64)


def test_output_head_is_groupnorm_silu_convolution():
    """The UNet's last layers: GroupNorm (32 groups at the published widths, fewer when
    narrower), SiLU, then a 3x3 convolution to out_channels."""
    import torch.nn.functional as F

    model = UNet(**TINY_UNET, image_size=16, out_channels=6).eval()
    perturb(model)
    seen: dict = {}
    hook = _capture(model.out, seen, "h", output=False)
    x, t = inputs(size=16)
    with torch.no_grad():
        out = model(x, t)
        norm, conv = model.out[0], model.out[-1]
        h = F.group_norm(seen["h"], 8, norm.weight, norm.bias, norm.eps)
        wanted = F.conv2d(F.silu(h), conv.weight, conv.bias, padding=1)
    hook.remove()
    assert out.shape == (2, 6, 16, 16)
    torch.testing.assert_close(out, wanted)


@pytest.mark.parametrize(
    "channels, groups",
    [
        (128, 32),
        (256, 32),
        (96, 32),
        (64, 32),
        (48, 24),
        (40, 20),
        (24, 12),
        (100, 25),
        (16, 8),
        (8, 4),
        (3, 1),
        (1, 1),
    ],
)
def test_norm_groups_is_the_largest_divisor_up_to_32_with_two_channels_per_group(channels, groups):
    from diffuse_cli.models.unet import norm_groups

    assert norm_groups(channels) == groups


def test_published_widths_normalise_in_32_groups():
    with torch.device("meta"):
        model = UNet(**DDPM_CIFAR10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {32}


@pytest.mark.parametrize(
    "mode, expected",
    [("train", True), ("eval", False), ("no_grad", False), ("off", False)],
)
def test_gradient_checkpointing_runs_only_when_training_with_gradients(monkeypatch, mode, expected):
    """use_checkpoint wraps every block in torch.utils.checkpoint in train mode with gradients
    on; in eval mode, under no_grad and with the option off the blocks run directly."""
    import contextlib

    import diffuse_cli.models.unet as unet

    calls = []

    def counting(fn, *args, **kwargs):
        calls.append(fn)
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(unet, "checkpoint", counting)
    model = UNet(**TINY_UNET, image_size=16, use_checkpoint=mode != "off")
    model.train(mode != "eval")
    x, t = inputs(size=16)
    with torch.no_grad() if mode == "no_grad" else contextlib.nullcontext():
        model(x, t)
    blocks = [*model.input_blocks, model.middle_block, *model.output_blocks]
    if expected:
        assert len(calls) == len(blocks) and all(a is b for a, b in zip(calls, blocks, strict=True))
    else:
        assert calls == []


def test_fixed_norm_groups_and_eps_reach_every_groupnorm():
    net = UNet(**{**SMALL, "norm_groups": 4, "norm_eps": 1e-6})
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) > 10 and all((m.num_groups, m.eps) == (4, 1e-6) for m in norms)
    with pytest.raises(ValueError, match="channels cannot be split into 5 norm groups"):
        UNet(**{**SMALL, "norm_groups": 5})


def test_downsample_padding_zero_pads_only_the_right_and_bottom():
    from diffuse_cli.models.unet import Downsample

    down = Downsample(2, padding=0)
    perturb(down)
    x = torch.randn(1, 2, 8, 8)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1))
    expected = torch.nn.functional.conv2d(padded, down.conv.weight, down.conv.bias, stride=2)
    assert down(x).shape == (1, 2, 4, 4) and torch.allclose(down(x), expected)
