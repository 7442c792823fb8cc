"""Class labels for sampling, label dropout in training, and the classifier network."""

import pytest
import torch
from omegaconf import OmegaConf

from diffuse_cli.errors import UserError
from diffuse_cli.models import EncoderClassifier, UNet
from diffuse_cli.sampling_labels import sample_labels

SMALL = dict(model_channels=16, channel_mult=(1, 2), attention_resolutions=(8,), image_size=16)


def cfg(class_labels, seed=0):
    return OmegaConf.create({"class_labels": class_labels, "seed": seed})


def test_random_labels_depend_only_on_seed_and_index():
    whole = sample_labels(cfg("random"), 4, range(0, 40))
    parts = torch.cat([sample_labels(cfg("random"), 4, range(a, a + 8)) for a in range(0, 40, 8)])
    assert torch.equal(whole, parts)
    assert set(whole.tolist()) == {0, 1, 2, 3}
    assert not torch.equal(whole, sample_labels(cfg("random", seed=1), 4, range(0, 40)))


def test_a_label_list_is_taken_in_turn():
    labels = sample_labels(cfg([3, 3, 5]), 10, range(0, 7))
    assert labels.tolist() == [3, 3, 5, 3, 3, 5, 3]
    assert sample_labels(cfg([2]), 10, range(4, 6)).tolist() == [2, 2]


def test_null_labels_need_a_null_label():
    assert sample_labels(cfg(None), 4, range(3), null_label=4).tolist() == [4, 4, 4]
    with pytest.raises(UserError, match="label dropout"):
        sample_labels(cfg(None), 4, range(3), null_label=None)


@pytest.mark.parametrize("bad", [[4], [-1], ["a"], [], "sometimes", [True], True])
def test_bad_labels_are_refused(bad):
    with pytest.raises(UserError, match="class_labels"):
        sample_labels(cfg(bad), 4, range(3))


def test_one_label_may_be_given_without_a_list():
    assert sample_labels(cfg(3), 4, range(2)).tolist() == [3, 3]


def test_labels_for_an_unconditional_model_are_refused():
    assert sample_labels(cfg("random"), None, range(3)) is None
    with pytest.raises(UserError, match="unconditional"):
        sample_labels(cfg([1]), None, range(3))


def test_the_null_label_has_its_own_learned_embedding():
    model = UNet(**SMALL, num_classes=3)
    assert model.label_embed.num_embeddings == 4
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 5])
    for p in model.parameters():  # undo the zero initialisation of the output layers
        torch.nn.init.normal_(p, std=0.05)
    assert not torch.allclose(model(x, t, torch.tensor([3, 3])), model(x, t, torch.tensor([0, 0])))


def test_label_dropout_replaces_labels_by_the_null_label(compose):
    from diffuse_cli.build import build_data
    from diffuse_cli.train.tasks import DiffusionTask

    c = compose(["model.num_classes=4", "trainer.label_dropout=0.1", "data.num_train=8"])
    task = DiffusionTask(c, build_data(c, "train"))
    seen = []

    def loss(diffusion, model, x0, t, model_kwargs=None):
        seen.append(model_kwargs["y"])
        return {"loss": torch.zeros(len(x0))}

    task.loss = loss
    n = 20_000
    y = torch.arange(n) % 4
    task.losses(None, torch.zeros(n, 3, 1, 1), y, torch.zeros(n, dtype=torch.long))
    dropped = seen[0] == 4
    # p = 0.1, not a p that is its own complement: dropping 1 - p would show; 5 standard errors
    assert abs(dropped.float().mean().item() - 0.1) < 5 * (0.1 * 0.9 / n) ** 0.5
    assert torch.equal(seen[0][~dropped], y[~dropped])


def test_conditional_training_needs_labelled_data(compose):
    from diffuse_cli.build import build_data
    from diffuse_cli.train.tasks import ClassifierTask, DiffusionTask

    c = compose(["data=swiss_roll", "model=mlp", "model.num_classes=2", "data.num_train=8"])
    with pytest.raises(UserError, match="no class labels"):
        DiffusionTask(c, build_data(c, "train"))
    with pytest.raises(UserError, match="no class labels"):
        ClassifierTask(c, build_data(c, "train"))
    c = compose(["model.num_classes=3", "data.num_train=8"])
    with pytest.raises(UserError, match="model.num_classes=4"):
        DiffusionTask(c, build_data(c, "train"))
    c = compose(["model.num_classes=10", "data.num_train=8"])  # 6 embeddings never trained
    with pytest.raises(UserError, match="has 4 classes but model.num_classes=10"):
        DiffusionTask(c, build_data(c, "train"))


def test_a_classifier_samples_timesteps_uniformly_whatever_the_loss_says(compose):
    """loss.* belongs to the denoiser: importance sampling needs VLB terms a classifier does
    not have (it used to stop with KeyError: 'vlb'), and hybrid's variance rule is not its."""
    from diffuse_cli.build import build_data
    from diffuse_cli.train.tasks import ClassifierTask
    from diffuse_cli.train.validate import validate_train_config

    c = compose(["task=classifier", "loss=hybrid", "loss.timesteps=importance", "data.num_train=8"])
    validate_train_config(c)  # hybrid with a fixed variance is refused for a denoiser only
    assert ClassifierTask(c, build_data(c, "train")).timestep_sampler == "uniform"


def test_an_ncsn_classifier_is_refused(compose):
    from diffuse_cli.build import build_data
    from diffuse_cli.train.tasks import ClassifierTask

    c = compose(["task=classifier", "schedule=ncsn", "loss=dsm", "data.num_train=8"])
    with pytest.raises(UserError, match="NCSN runs"):
        ClassifierTask(c, build_data(c, "train"))


def test_encoder_classifier_gives_logits_and_features_and_learns():
    torch.manual_seed(0)
    model = EncoderClassifier(4, **SMALL, num_heads=2)
    x, t = torch.randn(8, 3, 16, 16), torch.randint(0, 50, (8,))
    assert model(x, t).shape == (8, 4)
    assert model.features(x, t).shape == (8, 32)
    y = torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x, t), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert not any(k.startswith(("output_blocks", "out.")) for k in model.state_dict())


def test_encoder_classifier_depends_on_the_timestep():
    torch.manual_seed(0)
    model = EncoderClassifier(4, **SMALL)
    x = torch.randn(2, 3, 16, 16)
    for p in model.parameters():  # undo the zero initialisation of the residual branches
        torch.nn.init.normal_(p, std=0.05)
    a = model(x, torch.tensor([0, 0]))
    b = model(x, torch.tensor([40, 40]))
    assert not torch.allclose(a, b)
