"""The MLP for 2-D toy data: shapes, zero init, labels, residual blocks, the timestep in every
block, dropout."""

import pytest
import torch
from model_helpers import check_dropout, perturb

from diffuse_cli.models import MLP


def test_an_mlp_with_zero_classes_is_refused():
    with pytest.raises(ValueError, match="num_classes must be null"):
        MLP(num_classes=0)


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


def test_mlp_labels_must_match_conditioning():
    """As the UNet: labels are required by a class-conditional MLP and refused by another."""
    x, t = torch.randn(2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="class-conditional"):
        MLP(num_classes=3)(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        MLP()(x, t, torch.tensor([0, 1]))


def test_mlp_block_adds_its_branch_to_its_input():
    """A residual block whose last layer is zero is the identity."""
    from diffuse_cli.models.mlp import MLPBlock

    block = MLPBlock(8)
    perturb(block)
    torch.nn.init.zeros_(block.fc2.weight)
    torch.nn.init.zeros_(block.fc2.bias)
    h, emb = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(block(h, emb), h)


def test_every_mlp_block_sees_the_timestep():
    """With the embedding projection of every block but one zeroed, the output still depends
    on t, whichever block is kept: each block receives the embedding."""
    x = torch.randn(4, 2)
    for kept in range(3):
        model = MLP(hidden=32, num_layers=3).eval()
        perturb(model)
        with torch.no_grad():
            for k, block in enumerate(model.blocks):
                if k != kept:
                    block.emb_proj.weight.zero_()
                    block.emb_proj.bias.zero_()
            early, late = model(x, torch.full((4,), 10)), model(x, torch.full((4,), 900))
        assert not torch.allclose(early, late), f"block {kept} does not see t"


def test_mlp_dropout_draws_fresh_masks_in_training_and_is_off_in_eval():
    """model.dropout reaches the MLP: random in train mode, reproducible from the seed, and
    eval mode equals the network without dropout (no new parameters)."""
    model = MLP(hidden=32, num_layers=2, dropout=0.5)
    perturb(model)  # the zero-initialised output layer would hide the masks
    plain = MLP(hidden=32, num_layers=2)
    check_dropout(model, plain, torch.randn(8, 2), torch.randint(0, 1000, (8,)))


def test_mlp_denoiser_and_classifier_get_their_time_scale_and_dropout(compose):
    """model.dropout acts in the MLP (it was ignored); the denoiser takes model.rescale_timesteps
    (1000 / T), the MLP classifier raw t, as its checkpoints were always trained."""
    from diffuse_cli.build import build_classifier, build_model
    from diffuse_cli.errors import UserError

    cfg = compose(["data=moons", "model=mlp", "model.rescale_timesteps=true",
                   "schedule.num_timesteps=100", "model.dropout=0.2"])  # fmt: skip
    denoiser, classifier = build_model(cfg), build_classifier(cfg, num_classes=2)
    assert (denoiser.timestep_scale, classifier.timestep_scale) == (10.0, 1.0)
    for net in (denoiser, classifier):
        assert [block.dropout.p for block in net.blocks] == [0.2] * 4
    cfg.model.dropout = 1.5
    with pytest.raises(UserError, match=r"^model=mlp: dropout probability"):
        build_classifier(cfg, num_classes=2)


def test_mlp_builds_on_meta():
    with torch.device("meta"):
        model = MLP()
    assert next(model.parameters()).device.type == "meta"
