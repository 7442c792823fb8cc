"""The Python API, used the way README shows it."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from gaussian_oracle import GaussianOracle

import diffuse_cli as dc
from diffuse_cli.diffusion import quantize


def test_sample_runs_the_configured_sampler_with_any_callable(compose):
    cfg = compose(
        ["sampler=ddpm", "steps=200", "sampler.clip_denoised=false", "data=moons", "model=mlp"],
        command="sample",
    )  # Gaussian data is not bounded by [-1, 1]
    diffusion = dc.build_diffusion(cfg)
    assert diffusion.betas.dtype == torch.float64 and len(diffusion.alphas_cumprod) == 1000
    mu, std = torch.tensor([0.3, -0.2]), torch.tensor([0.5, 0.25])
    oracle = GaussianOracle(mu, std, diffusion.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(4000, 2, generator=g)
    x0 = dc.sample(cfg, oracle, diffusion, noise=x_T, generator=g)
    assert x0.shape == (4000, 2)
    # 4000 samples: standard errors of about 0.008 (mean) and 2.2% (variance)
    torch.testing.assert_close(x0.mean(0), mu, atol=0.04, rtol=0)
    torch.testing.assert_close(x0.var(0), std**2, rtol=0.12, atol=0)


def test_sample_with_the_same_generator_seed_repeats(compose):
    cfg = compose(
        ["sampler=ddim", "sampler.eta=1.0", "steps=10", "data=moons", "model=mlp"], command="sample"
    )
    diffusion = dc.build_diffusion(cfg)
    oracle = GaussianOracle(torch.zeros(2), torch.ones(2) * 0.5, diffusion.alphas_cumprod)
    x_T = torch.randn(8, 2)
    a = dc.sample(cfg, oracle, diffusion, noise=x_T, generator=torch.Generator().manual_seed(1))
    b = dc.sample(cfg, oracle, diffusion, noise=x_T, generator=torch.Generator().manual_seed(1))
    c = dc.sample(cfg, oracle, diffusion, noise=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_build_model_on_meta_allocates_nothing(compose):
    with torch.device("meta"):
        model = dc.build_model(compose(["model=ddpm"]))
    assert all(p.is_meta for p in model.parameters())


def test_load_run_returns_ema_weights(compose, tmp_path):
    from diffuse_cli.train.trainer import train

    cfg = compose([*TINY, "trainer.max_steps=2", f"run_dir={tmp_path}"])
    train(cfg)
    run_cfg, model, diffusion = dc.load_run(tmp_path)
    assert run_cfg.model.model_channels == 16 and not model.training
    _, raw, _ = dc.load_run(tmp_path, ema=False)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    with torch.no_grad():
        assert model(x, t).shape == (2, 3, 16, 16)
    differs = any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), raw.state_dict().values(), strict=True)
    )
    assert differs  # EMA and raw weights are different tensors after training
    # a command's config lends its execution keys only: the network is the run's
    command = compose(
        ["model.channels_last=true", "model.dropout=0.7", "schedule=cosine"], "sample"
    )
    cfg, laid_out, d = dc.load_run(tmp_path, config=command)
    assert laid_out.channels_last and cfg.model.dropout == run_cfg.model.dropout
    assert cfg.schedule.name == "linear" and torch.equal(d.betas, diffusion.betas)
    with torch.no_grad():
        torch.testing.assert_close(laid_out(x, t), model(x, t), rtol=1e-5, atol=1e-5)


def test_sample_and_nll_run_a_training_mode_network_without_dropout(compose):
    """A network fresh from dc.build_model is in training mode, with dropout. dc.sample and
    dc.nll_bpd run it as inference (same output as the eval-mode network, every call alike) and
    hand it back in training mode, its frozen submodules still frozen."""
    network = [o for o in TINY if o.startswith(("model.", "data.image_size", "schedule."))]
    cfg = compose([*network, "model.dropout=0.5", "sampler=ddim", "steps=4"], command="sample")
    diffusion = dc.build_diffusion(cfg)
    torch.manual_seed(0)
    model = dc.build_model(cfg)
    with torch.no_grad():  # zero-initialised output layers would hide any dropout
        for p in model.parameters():
            p.normal_(0, 0.1)
    model.time_embed.eval()  # a submodule kept in eval mode on purpose stays so
    assert model.training
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x0 = quantize(x_T.clamp(-1, 1))

    def run(net):
        g = torch.Generator().manual_seed(1)
        s = dc.sample(cfg, net, diffusion, noise=x_T, generator=g)
        b = dc.nll_bpd(net, diffusion, x0, generator=torch.Generator().manual_seed(2))["total"]
        return s, b

    first, second = run(model), run(model)
    assert model.training and not model.time_embed.training
    model.eval()
    reference = run(model)
    for got in (first, second):
        torch.testing.assert_close(got, reference, rtol=0, atol=0)


def test_evaluating_reaches_the_network_inside_wrappers():
    from diffuse_cli.guidance import ClassifierFree
    from diffuse_cli.models import UNet
    from diffuse_cli.models.modes import evaluating
    from diffuse_cli.samplers.nfe import NFECounter

    net = UNet(model_channels=16, channel_mult=(1,), attention_resolutions=(), num_classes=3)
    wrapped = NFECounter(ClassifierFree(net, 2.0))
    with evaluating(wrapped):
        assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.modules())
    with evaluating(lambda x, t: x):  # a plain callable: nothing to switch
        pass


def test_ddim_eta_above_one_is_refused_before_sampling(compose):
    from diffuse_cli.build import resolve_steps
    from diffuse_cli.errors import UserError

    cfg = compose(["sampler=ddim", "sampler.eta=1.5"], command="sample")
    with pytest.raises(UserError, match=r"sampler.eta=1.5 must be in \[0, 1\]"):
        resolve_steps(cfg, dc.build_diffusion(cfg))
