"""What the network tests share: small UNet settings, seeded inputs, weights moved off their
initialisation, and the dropout check both networks pass."""

import torch

SMALL = dict(
    model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,)
)
TINY_UNET = dict(
    model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,)
)


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


def check_dropout(model, plain, x, t) -> None:
    """`model` with dropout draws fresh masks in train mode, the same masks from the same seed,
    and in eval mode equals `plain` (the same network without dropout) on every call."""
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        model.train()
        a, b = model(x, t), model(x, t)
        torch.manual_seed(3)
        c = model(x, t)
        torch.manual_seed(3)
        d = model(x, t)
        model.eval()
        e, f = model(x, t), model(x, t)
        reference = plain(x, t)
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)
    assert torch.equal(e, f)
    torch.testing.assert_close(e, reference, rtol=0, atol=0)
    assert not torch.allclose(a, reference)
