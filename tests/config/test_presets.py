"""The published model and experiment presets: parameter counts, shapes and training settings."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from omegaconf import OmegaConf

from diffuse_cli.build import build_classifier, build_data, build_model, build_unet
from diffuse_cli.errors import UserError

# Published parameter counts (learned sigma: 6 output channels). DDPM: Ho et al. 2020, appendix B;
# ADM: Dhariwal & Nichol 2021, appendix Table 11 (also the guided-diffusion model card).
# improved-diffusion names its CIFAR-10 checkpoint "cifar10_uncond_50M"; the architecture of
# its flags has 52.5M parameters, the count given here.
PUBLISHED = {
    # preset: (image size, output channels, published parameters)
    "ddpm": (32, 3, 35.7e6),
    "iddpm_cifar10": (32, 6, 52.5e6),
    "adm_imagenet64": (64, 6, 296e6),
    "adm_imagenet128": (128, 6, 422e6),
    "adm_imagenet256": (256, 6, 554e6),
    "adm_lsun": (256, 6, 552e6),
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_model_preset_has_the_published_parameter_count(compose, preset):
    size, out_channels, published = PUBLISHED[preset]
    cfg = compose([f"model={preset}", f"data.image_size={size}"])
    assert cfg.model.image_size == size
    with torch.device("meta"):
        model = build_unet(cfg.model, 3, out_channels, size)
    assert next(model.parameters()).device.type == "meta"
    assert abs(count(model) - published) / published < 0.01, count(model)


def test_adm_imagenet_presets_are_class_conditional_and_lsun_is_not(compose):
    for size in (64, 128, 256):
        cfg = compose([f"model=adm_imagenet{size}", f"data.image_size={size}"])
        assert cfg.model.num_classes == 1000
        assert (cfg.model.resblock_updown, cfg.model.use_scale_shift_norm) == (True, True)
        assert cfg.model.residual_rescale is False  # as in the released code
    assert compose(["model=adm_lsun", "data.image_size=256"]).model.num_classes is None


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_small_preset_trains_at_32_and_64_pixels(compose, size, learned_sigma, num_classes):
    overrides = [
        "model=small",
        f"data.image_size={size}",
        f"model.num_classes={num_classes or 'null'}",
    ]
    if size == 64:  # the small preset attends at 8x8, which a 3-level UNet on 64 pixels lacks
        overrides.append("model.attention_resolutions=[16]")
    cfg = compose(overrides)
    out_channels = 6 if learned_sigma else 3
    torch.manual_seed(0)
    model = build_unet(cfg.model, 3, out_channels, size)
    x = torch.randn(2, 3, size, size)
    t = torch.tensor([0, 999])
    y = torch.tensor([1, 7]) if num_classes else None
    out = model(x, t, y)
    assert out.shape == (2, out_channels, size, size)
    (out - torch.randn_like(out)).square().mean().backward()  # an L_simple-like loss
    assert model.out[-1].weight.grad.abs().sum() > 0


def test_a_preset_at_another_image_size_is_refused_with_the_fix(compose):
    cfg = compose(["model=adm_imagenet64"])  # the default data is 32x32
    with pytest.raises(UserError, match=r"64x64 images, but data.image_size=32.*image_size=null"):
        build_model(cfg)
    with pytest.raises(UserError, match=r"64x64 images, but data.image_size=32"):
        build_classifier(cfg, num_classes=4)  # task=classifier builds the encoder half
    cfg = compose(["model=iddpm_cifar10", "data.image_size=64", "model.image_size=null"])
    with torch.device("meta"):
        assert count(build_model(cfg)) > 0


def test_a_bad_geometry_is_a_user_error(compose):
    with pytest.raises(UserError, match=r"model=small: attention_resolutions \[8\]"):
        build_model(compose(["data.image_size=64"]))


ADM = {
    # experiment: (schedule, lr, batch, steps)
    "adm_imagenet64": ("cosine", 3e-4, 2048, 540_000),
    "adm_imagenet128": ("linear", 1e-4, 256, 4_360_000),
    "adm_imagenet256": ("linear", 1e-4, 256, 1_980_000),
}


@pytest.mark.parametrize("experiment", sorted(ADM))
def test_adm_experiment_presets_hold_the_published_settings(compose, experiment):
    schedule, lr, batch, steps = ADM[experiment]
    cfg = compose([f"experiment={experiment}", "data.root=somewhere"])
    assert cfg.model.name == experiment and cfg.data.image_size == cfg.model.image_size
    assert (cfg.schedule.name, cfg.schedule.num_timesteps) == (schedule, 1000)
    assert (cfg.trainer.lr, cfg.trainer.batch_size, cfg.trainer.max_steps) == (lr, batch, steps)
    assert cfg.trainer.ema_decay == 0.9999 and cfg.prediction.name == "eps"
    assert (cfg.variance.name, cfg.loss.name) == ("learned_range", "hybrid")
    with torch.device("meta"):
        model = build_model(cfg)
    _, _, published = PUBLISHED[experiment]
    assert abs(count(model) - published) / published < 0.01


def test_class_conditional_adm_preset_trains_on_labelled_data(compose, tmp_path):
    """The ADM ImageNet presets are class-conditional (1000 classes): the trainer must hand the
    data's labels to the network. Shrunk to CPU size; the labelled shapes data (4 classes)
    stands in for ImageNet."""
    from diffuse_cli.train.trainer import train

    cfg = compose(
        [
            "experiment=adm_imagenet64",
            "data=shapes",
            "data.image_size=16",
            "data.num_train=16",
            "model.image_size=null",
            "model.model_channels=16",
            "model.channel_mult=[1,2]",
            "model.num_res_blocks=1",
            "model.attention_resolutions=[8]",
            "model.num_head_channels=8",
            "model.num_classes=4",  # the shapes' classes (1000 unused embeddings are refused)
            "trainer.batch_size=4",
            "trainer.max_steps=2",
            "trainer.sample_every=100",
            "trainer.sample_num=2",
            "trainer.sample_steps=2",
            "trainer.progress=false",
            f"run_dir={tmp_path}",
        ]
    )
    assert compose(["experiment=adm_imagenet64"]).model.num_classes == 1000
    assert cfg.trainer.label_dropout == 0.0
    train(cfg)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"


def test_ncsn_cifar10_preset_holds_the_published_settings(compose):
    """Song & Ermon 2019 (and the released configs/anneal.yml): L = 10 levels from 1 to 0.01 on
    [0, 1] data (2 to 0.02 on diffuse's [-1, 1]), DSM weighted by sigma^2, Adam lr 1e-3, batch
    128, 200k iterations, flips, no EMA; sampled with T = 100 Langevin steps per level."""
    from diffuse_cli.build import build_diffusion

    cfg = compose(["experiment=ncsn_cifar10", "data.root=somewhere"])
    assert (cfg.schedule.name, cfg.loss.name, cfg.prediction.name) == ("ncsn", "dsm", "score")
    levels = build_diffusion(cfg)
    assert levels.num_timesteps == 10
    assert float(levels.sigmas[0]) == pytest.approx(2 * 1.0)
    assert float(levels.sigmas[-1]) == pytest.approx(2 * 0.01)
    t = cfg.trainer
    assert (t.lr, t.batch_size, t.max_steps, t.optimizer) == (1e-3, 128, 200_000, "adam")
    assert (t.ema_decay, t.grad_clip, t.warmup_steps, cfg.data.hflip) == (0.0, 0.0, 0, True)
    sampler = compose(["sampler=langevin"], command="sample").sampler
    assert (sampler.steps_per_level, sampler.epsilon, sampler.denoise) == (100, None, True)
    with torch.device("meta"):
        assert abs(count(build_model(cfg)) - 35.7e6) / 35.7e6 < 0.01


def test_ncsn_shapes_preset_is_cpu_sized(compose):
    """NCSNv2's techniques 1 and 2 (Song & Ermon 2020): sigma_1 near the largest distance between
    two training images (at least that of the first 1000 of them), and a level ratio gamma with
    Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) ~ 0.5."""
    cfg = compose(["experiment=ncsn_shapes"])
    assert (cfg.schedule.name, cfg.loss.name, cfg.prediction.name) == ("ncsn", "dsm", "eps")
    assert (cfg.model.name, cfg.data.name, cfg.trainer.max_steps) == ("small", "shapes", 3000)
    images = build_data(cfg, "train")
    x = torch.stack([images[i][0] for i in range(1000)]).flatten(1).double()
    largest = float(torch.cdist(x, x).max())
    assert largest <= cfg.schedule.sigma_max <= 1.1 * largest
    L, D = cfg.schedule.num_timesteps, x.shape[1]
    gamma = (cfg.schedule.sigma_max / cfg.schedule.sigma_min) ** (1 / (L - 1))
    phi, root = NormalDist().cdf, math.sqrt(2 * D) * (gamma - 1)
    assert phi(root + 3 * gamma) - phi(root - 3 * gamma) == pytest.approx(0.5, abs=0.02)


def test_the_iddpm_presets_feed_the_network_t_scaled_to_1000_steps(compose):
    """improved-diffusion's code defaults to rescale_timesteps: with T = 4000 the network's
    time embedding sees t * 1000 / 4000. Other presets see t itself."""
    with torch.device("meta"):
        for experiment in ("cifar10_iddpm", "imagenet64_iddpm"):
            cfg = compose([f"experiment={experiment}", "data.root=somewhere"])
            assert cfg.schedule.num_timesteps == 4000
            assert build_model(cfg).timestep_scale == 0.25
        assert build_model(compose(["experiment=cifar10_ddpm"])).timestep_scale == 1.0


def test_an_old_run_without_rescale_timesteps_reads_back_as_raw_timesteps(compose, tmp_path):
    from diffuse_cli.runs import read_run_config

    old = OmegaConf.to_container(compose(["model=iddpm_cifar10"]))
    del old["model"]["rescale_timesteps"]  # written before the key existed: t as it was
    OmegaConf.save(OmegaConf.create(old), tmp_path / "config.yaml")
    assert read_run_config(tmp_path).model.rescale_timesteps is False
