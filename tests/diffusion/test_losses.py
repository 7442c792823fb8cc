"""Training losses: L_simple, L_VLB and L_hybrid (Nichol & Dhariwal 2021, sec. 3.1)."""

import math
from pathlib import Path

import pytest
import torch

from diffuse_cli.diffusion import GaussianDiffusion, get_betas, get_loss, normal_kl, quantize

T = 100


def data(shape=(6, 3, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = quantize(torch.rand(shape, generator=g) * 2 - 1)
    return x0, torch.randn(shape, generator=g), torch.tensor([0, 1, 7, 40, 98, 99])


def leaf_output(shape, seed=1):
    """A 'model' whose output is one leaf tensor, to read gradients at the output."""
    out = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.5).requires_grad_()
    return out, (lambda x, t: out)


def test_simple_is_the_diffusion_training_loss():
    d = GaussianDiffusion(get_betas("cosine", T), variance="learned_range")
    x0, noise, t = data()
    out, model = leaf_output((6, 6, 4, 4))
    ours = get_loss("simple")(d, model, x0, t, noise=noise)
    theirs = d.training_losses(model, x0, t, noise=noise)
    assert torch.equal(ours["loss"], theirs["loss"]) and set(ours) == {"loss", "mse"}
    torch.testing.assert_close(ours["mse"], ((out[:, :3] - noise) ** 2).mean(dim=(1, 2, 3)))


def test_vlb_terms_are_the_kl_and_the_decoder():
    d = GaussianDiffusion(get_betas("linear", T), variance="learned")
    x0, noise, t = data()
    out, model = leaf_output((6, 6, 4, 4))
    losses = get_loss("vlb")(d, model, x0, t, noise=noise)
    x_t = d.q_sample(x0, t, noise)
    p = d.p_from_parts(out[:, :3], out[:, 3:], x_t, t, clip_denoised=False)
    q_mean, _, q_log_var = d.q_posterior(x0, x_t, t)
    kl = normal_kl(q_mean, q_log_var, p["mean"], p["log_variance"]).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["vlb"][1:], kl[1:] / math.log(2))
    # t = 0: minus the discretized log-likelihood of x0 under N(mean, Sigma)
    dist = torch.distributions.Normal(p["mean"][0].double(), (0.5 * out[0, 3:]).exp().double())
    lower = torch.where(x0[0] < -0.999, -math.inf, x0[0] - 1 / 255).double()
    upper = torch.where(x0[0] > 0.999, math.inf, x0[0] + 1 / 255).double()
    nll = -torch.log(dist.cdf(upper) - dist.cdf(lower)).mean() / math.log(2)
    torch.testing.assert_close(losses["vlb"][0].double(), nll, rtol=1e-4, atol=1e-4)
    # the loss estimates L_VLB = L_T + sum_t L_t by L_T + T L_t
    torch.testing.assert_close(losses["loss"], d.prior_bpd(x0) + T * losses["vlb"])


@pytest.mark.parametrize("variance", ["learned", "learned_range"])
def test_hybrid_sends_the_mean_only_the_l_simple_gradient(variance):
    d = GaussianDiffusion(get_betas("cosine", T), variance=variance)
    x0, noise, t = data()
    grads = {}
    for name in ("simple", "hybrid"):
        out, model = leaf_output((6, 6, 4, 4))
        get_loss(name)(d, model, x0, t, noise=noise)["loss"].sum().backward()
        grads[name] = out.grad
    assert torch.equal(grads["hybrid"][:, :3], grads["simple"][:, :3])
    assert grads["simple"][:, 3:].abs().max() == 0
    assert grads["hybrid"][:, 3:].abs().min() > 0  # the VLB term trains the variance


def test_hybrid_is_l_simple_plus_lambda_times_the_vlb_estimate():
    d = GaussianDiffusion(get_betas("cosine", T), variance="learned_range")
    x0, noise, t = data()
    _, model = leaf_output((6, 6, 4, 4))
    hybrid = get_loss("hybrid", lam=0.01)(d, model, x0, t, noise=noise)
    vlb = get_loss("vlb")(d, model, x0, t, noise=noise)
    simple = get_loss("simple")(d, model, x0, t, noise=noise)
    torch.testing.assert_close(hybrid["vlb"], vlb["vlb"])
    torch.testing.assert_close(hybrid["loss"], simple["loss"] + 0.01 * vlb["loss"])


def test_the_vlb_loss_trains_a_fixed_variance_model_through_its_mean():
    d = GaussianDiffusion(get_betas("linear", T), variance="fixed_small")
    x0, noise, t = data()
    out, model = leaf_output((6, 3, 4, 4))
    losses = get_loss("vlb")(d, model, x0, t, noise=noise)
    losses["loss"].sum().backward()
    assert torch.isfinite(losses["loss"]).all() and out.grad.abs().sum() > 0


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match="hybrid, simple, vlb"):
        get_loss("l1")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.timesteps=importance"], "use loss=vlb or loss=hybrid"),
        (["variance=learned_range"], "variance=learned_range is trained only by a VLB term"),
        (["loss=hybrid", "variance=learned", "loss.lam=-1"], "loss.lam=-1.0 must be >= 0"),
        (["loss=hybrid"], "variance=fixed_small: the VLB term stops the mean's gradient"),
        (["loss=hybrid", "variance=fixed_large"], "adds no gradient, only compute"),
        (["loss=vlb", "loss.timesteps=stratified"], "is not one of: uniform, importance"),
    ],
)
def test_loss_settings_that_do_not_fit_are_refused(compose, overrides, message):
    from diffuse_cli.errors import UserError
    from diffuse_cli.train.validate import validate_train_config

    with pytest.raises(UserError, match=message):
        validate_train_config(compose(overrides))


def test_iddpm_settings_pass_validation(compose):
    from diffuse_cli.train.validate import validate_train_config

    validate_train_config(
        compose(["loss=hybrid", "loss.timesteps=importance", "variance=learned_range"])
    )


IDDPM = {
    # experiment: (model, data, image size, steps)
    "cifar10_iddpm": ("iddpm_cifar10", "cifar10", 32, 500_000),
    "imagenet64_iddpm": ("iddpm_imagenet64", "image_folder", 64, 1_500_000),
}


@pytest.mark.parametrize("experiment", sorted(IDDPM))
def test_iddpm_presets_hold_the_published_settings(compose, experiment):
    import diffuse_cli as dc
    from diffuse_cli.train.validate import validate_train_config

    model, data, size, steps = IDDPM[experiment]
    cfg = compose([f"experiment={experiment}", "data.root=somewhere"])
    assert (cfg.schedule.name, cfg.schedule.num_timesteps) == ("cosine", 4000)
    assert (cfg.variance.name, cfg.loss.name, cfg.loss.lam) == ("learned_range", "hybrid", 0.001)
    assert (cfg.model.name, cfg.data.name, cfg.data.image_size) == (model, data, size)
    assert (cfg.trainer.lr, cfg.trainer.batch_size, cfg.trainer.max_steps) == (1e-4, 128, steps)
    assert cfg.trainer.ema_decay == 0.9999 and cfg.prediction.name == "eps"
    validate_train_config(cfg)
    with torch.device("meta"):
        net = dc.build_model(cfg)
    assert net.out_channels == 6
    if experiment == "imagenet64_iddpm":  # our count of the released flags
        assert abs(sum(p.numel() for p in net.parameters()) - 121.06e6) < 0.01e6
    # the preset opens with its source and the exact command
    path = Path(__file__).parents[2] / "configs" / "experiment" / f"{experiment}.yaml"
    header = path.read_text().split("defaults:")[0]
    assert "Nichol & Dhariwal 2021" in header and "openai/improved-diffusion" in header
    assert f"#   diffuse train experiment={experiment} data.root=" in header


def test_hybrid_with_a_fixed_variance_is_refused_only_for_a_fresh_run(compose):
    """A run started before the rule existed can still be resumed and finish."""
    from diffuse_cli.errors import UserError
    from diffuse_cli.train.validate import validate_train_config

    cfg = compose(["loss=hybrid"])
    with pytest.raises(UserError, match="adds no gradient"):
        validate_train_config(cfg)
    validate_train_config(cfg, fresh=False)
