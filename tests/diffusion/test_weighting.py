"""loss.weighting: uniform (L_simple as it was), min_snr (Hang et al. 2023) and edm (Karras et al.
2022), each right for every prediction type and one objective on x0 whatever the prediction."""

import pytest
import torch
from gaussian_oracle import GaussianOracle
from omegaconf import OmegaConf

from diffuse_cli.diffusion import GaussianDiffusion, get_betas, get_loss, get_weighting
from diffuse_cli.errors import UserError

T = 1000
PREDICTIONS = ("eps", "x0", "v")
# t = 0 and 1 (SNR ~ 1e4), the middle, and T-2, T-1 (SNR ~ 4e-5 linear, ~ 2e-9 cosine)
TIMESTEPS = torch.tensor([0, 1, 2, 10, 100, 250, 400, 500, 600, 750, 900, 990, 998, 999])


def diffusion(prediction, schedule="linear"):
    return GaussianDiffusion(get_betas(schedule, T), prediction=prediction)


def snr_of(d, t):
    abar = d.alphas_cumprod[t]
    return abar / (1 - abar)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_each_prediction_as_the_paper_writes(schedule, gamma):
    """min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0."""
    weighting = get_weighting("min_snr", snr_gamma=gamma)
    expected = {
        "eps": lambda s: torch.minimum(s, torch.full_like(s, gamma)) / s,
        "v": lambda s: torch.minimum(s, torch.full_like(s, gamma)) / (s + 1),
        "x0": lambda s: torch.minimum(s, torch.full_like(s, gamma)),
    }
    for prediction, formula in expected.items():
        d = diffusion(prediction, schedule)
        s = snr_of(d, torch.arange(T))
        torch.testing.assert_close(weighting.table(d), formula(s), rtol=1e-12, atol=0)
    eps = weighting.table(diffusion("eps", schedule))
    assert eps[-1] == 1 and eps[0] < 1e-3  # noisy steps keep L_simple's weight, clean ones lose it


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_edm_weights_are_lambda_sigma_moved_into_each_predictions_space(schedule):
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the x0 error, sigma^2 =
    (1 - abar) / abar, sigma_data = 0.5; divided by SNR (eps), SNR + 1 (v) or 1 (x0)."""
    weighting = get_weighting("edm")
    d = diffusion("eps", schedule)
    abar = d.alphas_cumprod
    sigma2 = (1 - abar) / abar
    lam = (sigma2 + 0.25) / (sigma2 * 0.25)
    s = 1 / sigma2
    for prediction, scale in (("eps", s), ("v", s + 1), ("x0", torch.ones_like(s))):
        table = weighting.table(diffusion(prediction, schedule))
        torch.testing.assert_close(table, lam / scale, rtol=1e-10, atol=0)
    v = weighting.table(diffusion("v", schedule))
    assert 1 <= v.min() and v.max() <= 4  # (SNR + 4) / (SNR + 1): bounded for v


def outputs_for(d, x0_hat, x0, noise, t):
    """A network's outputs in the three spaces that all mean the same x0_hat at x_t."""
    x_t = d.q_sample(x0, t, noise)
    return {
        "x0": x0_hat,
        "eps": d.predict_eps_from_x0(x_t, t, x0_hat),
        "v": d.v_from_x0_eps(x0_hat, d.predict_eps_from_x0(x_t, t, x0_hat), t),
    }


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("weighting", ["min_snr", "edm"])
def test_weighted_losses_in_the_three_spaces_are_one_objective_on_x0(schedule, weighting):
    """For one x0, noise, t and one x0 estimate, the eps, x0 and v outputs that stand for it get
    the same weighted loss, w(SNR) ||x0_hat - x0||^2; unweighted, they do not."""
    g = torch.Generator().manual_seed(0)
    n = len(TIMESTEPS)
    x0 = torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    x0_hat = x0 + 0.3 * torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    outputs = outputs_for(diffusion("eps", schedule), x0_hat, x0, noise, TIMESTEPS)
    losses, plain = {}, {}
    for prediction in PREDICTIONS:
        d = diffusion(prediction, schedule)
        model = lambda x_t, t, out=outputs[prediction]: out  # noqa: E731
        losses[prediction] = get_loss("simple", weighting=weighting)(d, model, x0, TIMESTEPS, noise)
        plain[prediction] = get_loss("simple")(d, model, x0, TIMESTEPS, noise)["loss"]
    s = snr_of(diffusion("eps", schedule), TIMESTEPS)
    x0_weight = s.clamp(max=5.0) if weighting == "min_snr" else s + 4
    expected = x0_weight * ((x0_hat - x0) ** 2).mean(dim=(1, 2, 3))
    for prediction in PREDICTIONS:
        torch.testing.assert_close(losses[prediction]["loss"], expected, rtol=1e-6, atol=0)
        assert torch.equal(losses[prediction]["mse"], plain[prediction])  # "mse" stays unweighted
    assert not torch.allclose(plain["eps"], plain["x0"], rtol=0.5)  # the spaces do differ


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_optimal_model_has_the_closed_form_weighted_loss(prediction):
    """Gaussian data N(mu, s^2): the exact E[x0 | x_t] leaves Var[x0 | x_t] = s^2 sigma^2 /
    (s^2 + sigma^2) per dimension, sigma^2 = 1 / SNR, so the min-SNR loss of the optimal model
    of any prediction type is min(SNR, 5) times that."""
    d = diffusion(prediction)
    std = 0.5
    oracle = GaussianOracle(torch.zeros(2), torch.full((2,), std), d.alphas_cumprod, prediction)
    n = 20000
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 50, 200, 500, 999]).repeat_interleave(n)
    x0 = oracle.sample_data(len(t), g).double()
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    loss = get_loss("simple", weighting="min_snr")(d, oracle, x0, t, noise)["loss"]
    s = snr_of(d, t[::n])
    posterior = std**2 / s / (std**2 + 1 / s)
    expected = s.clamp(max=5.0) * posterior
    torch.testing.assert_close(loss.reshape(5, n).mean(dim=1), expected, rtol=0.03, atol=0)


def test_uniform_is_l_simple_as_it_was():
    d = GaussianDiffusion(get_betas("cosine", 100), prediction="v", variance="learned_range")
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.rand(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 7, 40, 98, 99])
    out = torch.randn(6, 6, 4, 4, generator=g)
    model = lambda x_t, t: out  # noqa: E731
    uniform = get_loss("simple", weighting="uniform")
    assert uniform.weighting is None and get_weighting("uniform") is None
    today = d.training_losses(model, x0, t, noise)["loss"]
    assert torch.equal(uniform(d, model, x0, t, noise)["loss"], today)
    hybrid = get_loss("hybrid", lam=0.01, weighting="uniform")(d, model, x0, t, noise)
    assert torch.equal(hybrid["loss"], get_loss("hybrid", lam=0.01)(d, model, x0, t, noise)["loss"])


def test_hybrid_weights_the_l_simple_part_only_and_the_variance_keeps_its_gradient():
    d = GaussianDiffusion(get_betas("cosine", 100), prediction="eps", variance="learned_range")
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.rand(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 7, 40, 98, 99])
    start = torch.randn(6, 6, 4, 4, generator=g)
    results = {}
    for weighting in ("uniform", "min_snr"):
        out = start.clone().requires_grad_()
        model = lambda x, t, out=out: out  # noqa: E731
        losses = get_loss("hybrid", lam=0.01, weighting=weighting)(d, model, x0, t, noise)
        losses["loss"].sum().backward()
        results[weighting] = losses, out.grad
    (weighted, grad_w), (uniform, grad_u) = results["min_snr"], results["uniform"]
    w = get_weighting("min_snr").table(d)[t].float()
    torch.testing.assert_close(weighted["loss"] - uniform["loss"], (w - 1) * uniform["mse"])
    assert torch.equal(weighted["vlb"], uniform["vlb"])  # the importance sampler's history
    assert torch.equal(grad_w[:, 3:], grad_u[:, 3:])  # the VLB term alone trains the variance
    assert not torch.allclose(grad_w[:, :3], grad_u[:, :3])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=vlb", "loss.weighting=min_snr"], "loss=vlb has none .* use loss=simple or"),
        (["schedule=ncsn", "loss=dsm", "prediction=score", "loss.weighting=edm"],
         r"loss=dsm has none \(its levels are weighted by sigma\^2\); use loss.weighting=uniform"),
        (["loss.weighting=p2"], "loss.weighting='p2' is not one of: uniform, min_snr, edm"),
        (["loss.weighting=min_snr", "loss.snr_gamma=0"], "loss.snr_gamma=0.0 must be > 0"),
    ],
)  # fmt: skip
def test_weightings_that_do_not_fit_the_loss_are_refused_in_one_line(compose, overrides, message):
    from diffuse_cli.train.validate import validate_train_config

    with pytest.raises(UserError, match=message) as err:
        validate_train_config(compose(overrides))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.weighting=min_snr"],
        ["prediction=v", "loss.weighting=edm"],
        ["loss=hybrid", "variance=learned_range", "loss.timesteps=importance",
         "loss.weighting=min_snr", "loss.snr_gamma=1"],
    ],
)  # fmt: skip
def test_weighted_recipes_pass_validation_and_build_their_loss(compose, overrides):
    from diffuse_cli.build import build_loss
    from diffuse_cli.train.validate import validate_train_config

    cfg = compose(overrides)
    validate_train_config(cfg)
    weighting = build_loss(cfg).weighting
    assert weighting.name == cfg.loss.weighting and weighting.snr_gamma == cfg.loss.snr_gamma


def saved_run(compose, tmp_path, overrides, drop_weighting=False):
    from diffuse_cli.train.checkpoint import save_checkpoint

    old = OmegaConf.to_container(compose([*overrides, f"run_dir={tmp_path}"]))
    if drop_weighting:  # a run written before loss.weighting existed
        del old["loss"]["weighting"], old["loss"]["snr_gamma"]
    OmegaConf.save(OmegaConf.create(old), tmp_path / "config.yaml")
    w = {"w": torch.zeros(1)}
    save_checkpoint(tmp_path, 1, w, w, {"state": {}, "param_groups": []}, {})
    return tmp_path


def test_resume_refuses_another_weighting_and_names_the_saved_one(compose, tmp_path):
    from diffuse_cli.train.validate import check_resumable

    run = saved_run(compose, tmp_path, ["loss.weighting=min_snr"])
    check_resumable(compose(["loss.weighting=min_snr"]), run)
    with pytest.raises(UserError, match="resume it with loss.weighting=min_snr"):
        check_resumable(compose([]), run)
    with pytest.raises(UserError, match=r"loss.snr_gamma=1.0 \(saved: 5.0\)"):
        check_resumable(compose(["loss.weighting=min_snr", "loss.snr_gamma=1"]), run)


def test_runs_from_before_the_key_read_it_as_uniform(compose, tmp_path):
    from diffuse_cli.runs import read_run_config
    from diffuse_cli.train.validate import check_resumable

    run = saved_run(compose, tmp_path, [], drop_weighting=True)
    assert read_run_config(run).loss.weighting == "uniform"
    check_resumable(compose([]), run)
    with pytest.raises(UserError, match=r"loss.weighting='min_snr' \(saved: 'uniform'\)"):
        check_resumable(compose(["loss.weighting=min_snr"]), run)


def test_a_weighted_run_with_importance_sampling_and_learned_variance_resumes_exactly(
    compose, tmp_path
):
    """min_snr on v with loss=hybrid, a learned variance and importance-sampled t (warmed up
    before the interruption, T = 2): k steps + resume + k steps equals 2k steps straight."""
    from safetensors.torch import load_file

    from diffuse_cli.train.checkpoint import latest_checkpoint
    from diffuse_cli.train.trainer import train

    common = ["data=moons", "model=mlp", "model.hidden=32", "model.num_layers=2",
              "data.num_train=64", "data.num_test=32", "trainer.batch_size=8",
              "trainer.warmup_steps=2", "trainer.progress=false", "trainer.sample_num=0",
              "trainer.ckpt_every=4", "trainer.log_every=4", "prediction=v", "loss=hybrid",
              "loss.weighting=min_snr", "loss.snr_gamma=1", "loss.timesteps=importance",
              "variance=learned_range", "schedule.num_timesteps=2",
              "schedule.scale_betas=false"]  # fmt: skip
    train(compose([*common, "trainer.max_steps=8", f"run_dir={tmp_path / 'a'}"]))
    train(compose([*common, "trainer.max_steps=4", f"run_dir={tmp_path / 'b'}"]))
    history = load_file(latest_checkpoint(tmp_path / "b") / "timesteps.safetensors")
    assert history["loss_counts"].tolist() == [10, 10]  # the resumed half samples t from it
    train(compose([*common, "trainer.max_steps=8", f"run_dir={tmp_path / 'b'}"]))
    wa, wb = (load_file(latest_checkpoint(tmp_path / r) / "model.safetensors") for r in "ab")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    logged = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(logged) == 2 and all('"loss": null' not in line for line in logged)
