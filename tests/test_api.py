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

    cfg = compose([*TINY, "trainer.max_steps=2", "trainer.ckpt_every=1", "trainer.keep_last=0",
                   f"run_dir={tmp_path}"])  # fmt: skip
    train(cfg)
    run_cfg, model, diffusion = dc.load_run(tmp_path)
    assert run_cfg.model.model_channels == 16 and not model.training
    _, raw, _ = dc.load_run(tmp_path, ema=False)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    with torch.no_grad():
        assert model(x, t).shape == (2, 3, 16, 16)
    from safetensors.torch import load_file

    from diffuse_cli.train.checkpoint import latest_checkpoint

    folder = latest_checkpoint(tmp_path)
    for net, stored in ((model, "ema.safetensors"), (raw, "model.safetensors")):
        saved = load_file(folder / stored)
        assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
               raw.state_dict().values(), strict=True))  # fmt: skip
    _, _, _, first = dc.open_run(tmp_path, step=1)  # the step asked for, named with its digest
    assert first.step == 1 and first.folder.name == "step_00000001"
    assert first.sha256 != dc.open_run(tmp_path)[3].sha256
    _, on_meta, _ = dc.load_run(tmp_path, device="meta")
    assert all(p.is_meta for p in on_meta.parameters())
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


def test_evaluating_reaches_a_guidance_classifier(compose):
    """The classifier inside classifier guidance (the eps shift, or ddpm's cond_fn) samples
    without dropout too: it kept its training mode."""
    from diffuse_cli.build import build_classifier, build_diffusion, build_model
    from diffuse_cli.guidance import ClassifierGradient, EpsShift, WithLabels
    from diffuse_cli.models.modes import evaluating

    cfg = compose(["data=moons", "model=mlp", "model.dropout=0.5"], "sample")
    net, classifier = build_model(cfg), build_classifier(cfg, num_classes=2)
    gradient = ClassifierGradient(classifier, 1.0)
    for callables in ((EpsShift(WithLabels(net), build_diffusion(cfg), gradient),),
                      (WithLabels(net), gradient)):  # fmt: skip
        with evaluating(*callables):
            assert not any(m.training for m in (*net.modules(), *classifier.modules()))
        assert all(m.training for m in (*net.modules(), *classifier.modules()))


def test_ddim_eta_above_one_is_refused_before_sampling(compose):
    from diffuse_cli.build import resolve_steps
    from diffuse_cli.errors import UserError

    cfg = compose(["sampler=ddim", "sampler.eta=1.5"], command="sample")
    with pytest.raises(UserError, match=r"sampler.eta=1.5 must be in \[0, 1\]"):
        resolve_steps(cfg, dc.build_diffusion(cfg))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["schedule=cosinee"],
            "Could not find 'schedule/cosinee' (options: cosine, edm, linear, ncsn)",
        ),
        (["trainer.max_steps=abc"], "trainer.max_steps=abc: Value 'abc' of type 'str' could not"),
        (["+trainer.lrr=1"], "trainer.lrr is not a setting of `diffuse train` (did you mean"),
    ],
)
def test_compose_config_refuses_what_the_cli_refuses_in_one_line(overrides, message):
    from diffuse_cli.errors import UserError

    with pytest.raises(UserError) as err:
        dc.compose_config(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert dc.compose_config("schedule=cosine").schedule.name == "cosine"  # one override


def test_compose_config_leaves_the_callers_hydra_as_it_was(tmp_path):
    from hydra import compose, initialize_config_dir

    (tmp_path / "mine.yaml").write_text("answer: 42\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        assert compose("mine").answer == 42
        dc.compose_config(["schedule=cosine"])
        assert compose("mine").answer == 42


def test_sample_calls_the_network_at_the_steps_and_spacing_of_the_config(compose):
    """steps and sampler.spacing pick the timesteps the network sees, in descending order."""
    from diffuse_cli.diffusion.respace import space_timesteps

    seen = []

    def network(x, t, **kwargs):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    for spacing in ("even", "trailing"):
        cfg = compose(["data=moons", "model=mlp", "sampler=ddim", "steps=7",
                       f"sampler.spacing={spacing}"], "sample")  # fmt: skip
        seen.clear()
        dc.sample(cfg, network, dc.build_diffusion(cfg), noise=torch.randn(3, 2))
        assert seen == sorted(space_timesteps(1000, 7, spacing), reverse=True)


def test_api_calls_with_the_wrong_config_or_model_say_what_they_need(compose):
    from diffuse_cli.errors import UserError

    train_cfg = compose(["data=moons", "model=mlp"])
    model, diffusion = dc.build_model(train_cfg), dc.build_diffusion(train_cfg)
    with pytest.raises(UserError, match="sample needs a sample config"):
        dc.sample(train_cfg, model, diffusion, noise=torch.randn(2, 2))
    with pytest.raises(UserError, match="build_guidance needs a sample or eval config"):
        dc.build_guidance(train_cfg, model, diffusion)
    cfg = compose(["data=moons", "model=mlp", "guidance=cfg"], "sample")
    with pytest.raises(UserError, match="guidance=cfg: .*needs a class-conditional network"):
        dc.build_guidance(cfg, model, diffusion)
    ncsn = dc.build_diffusion(compose(["schedule=ncsn", "loss=dsm"]))
    with pytest.raises(UserError, match="nll_bpd needs a DDPM diffusion"):
        dc.nll_bpd(model, ncsn, torch.zeros(2, 2))
