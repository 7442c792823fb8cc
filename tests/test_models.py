import pytest
import torch

from diffuse_cli.models import MLP, UNet, timestep_embedding

SMALL = dict(
    model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,)
)
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


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every weight off its initialisation so zero-initialised layers carry signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def inputs(batch=2, channels=3, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    return x, t


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


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


@pytest.mark.parametrize(
    "kwargs, out_dim",
    [(dict(), 2), (dict(out_dim=4), 4), (dict(dim=3, hidden=64, num_layers=2, num_classes=8), 3)],
)
def test_mlp_output_shape_and_zero_init(kwargs, out_dim):
    model = MLP(**kwargs)
    x = torch.randn(5, kwargs.get("dim", 2))
    t = torch.randint(0, 1000, (5,))
    y = torch.randint(0, 8, (5,)) if kwargs.get("num_classes") else None
    out = model(x, t, y)
    assert out.shape == (5, out_dim)
    assert torch.equal(out, torch.zeros_like(out))


def test_mlp_learns_from_its_gradients_and_uses_labels():
    model = MLP(num_classes=2)
    perturb(model)
    x, t = torch.randn(4, 2), torch.randint(0, 1000, (4,))
    a = model(x, t, torch.tensor([0, 0, 0, 0]))
    b = model(x, t, torch.tensor([1, 1, 1, 1]))
    assert not torch.allclose(a, b)
    a.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mlp_builds_on_meta():
    with torch.device("meta"):
        model = MLP()
    assert next(model.parameters()).device.type == "meta"
