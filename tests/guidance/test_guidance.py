"""Guidance math against closed forms, with the exact models of class-conditional Gaussian data
(tests/oracles/class_oracle.py): no training involved."""

import pytest
import torch
from class_oracle import ClassGaussians, OneClass, Unconditional
from gaussian_oracle import GaussianOracle, reverse_moments

from diffuse_cli.build import build_guidance
from diffuse_cli.diffusion import GaussianDiffusion, get_betas
from diffuse_cli.guidance import ClassifierFree, ClassifierGradient, EpsShift, WithLabels
from diffuse_cli.samplers import PerSampleNoise, get_sampler
from diffuse_cli.samplers.steps import respaced

MEANS = [[-1.5, 0.0], [1.5, 0.0], [0.0, 1.5]]
STD = 0.4
N = 64


def setup(prediction="eps", T=100):
    diffusion = GaussianDiffusion(get_betas("linear", T), prediction=prediction)
    oracle = ClassGaussians(MEANS, STD, diffusion.alphas_cumprod, prediction)
    return diffusion, oracle


def draw(sampler, model, diffusion, steps, y, seed=0, **kwargs):
    noise = PerSampleNoise(list(range(seed, seed + N)))
    x_T = noise.randn((2,))
    return get_sampler(sampler)(
        model,
        diffusion,
        x_T,
        steps=steps,
        noise=noise,
        clip_denoised=False,
        model_kwargs={"y": y} if y is not None else None,
        **kwargs,
    )


LABELS = torch.arange(N) % 3


CASES = [(p, "ddim") for p in ("eps", "x0", "v")] + [
    ("eps", s) for s in ("euler", "heun", "dpm_solver", "pc")
]


@pytest.mark.parametrize(("prediction", "sampler"), CASES)
@pytest.mark.parametrize("scale", [0.0, 4.0])
def test_classifier_guidance_with_the_exact_classifier_is_cfg(prediction, sampler, scale):
    """grad log p(y|x_t) = -(eps(x_t, y) - eps(x_t)) / sqrt(1 - abar_t) exactly, so the eps shift
    of classifier guidance (autograd through the classifier) must reproduce classifier-free
    guidance eps_u + s (eps_c - eps_u) sample by sample, for every prediction type."""
    diffusion, oracle = setup(prediction)
    gradient = ClassifierGradient(oracle.classifier, scale)
    guided = EpsShift(WithLabels(Unconditional(oracle)), diffusion, gradient)
    free = ClassifierFree(oracle, scale)
    a = draw(sampler, guided, diffusion, 8, LABELS)
    b = draw(sampler, free, diffusion, 8, LABELS)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_scale_one_samples_the_class_exactly(sampler):
    """At s = 1 the guided unconditional mixture model is the exact model of class y alone: the
    samples equal those of that class's own Gaussian model, for each class."""
    diffusion, oracle = setup()
    for y in range(3):
        labels = torch.full((N,), y)
        guided = EpsShift(
            WithLabels(Unconditional(oracle)), diffusion, ClassifierGradient(oracle.classifier, 1)
        )
        a = draw(sampler, guided, diffusion, 10, labels)
        b = draw(sampler, OneClass(oracle, y), diffusion, 10, None)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        if sampler == "ddim":  # and the class's exact output moments (gaussian_oracle)
            exact = GaussianOracle(MEANS[y], STD, diffusion.alphas_cumprod)
            mean, var = reverse_moments(exact, respaced(diffusion, 10, "even"), sampler="ddim")
            assert ((a.double().mean(0) - mean).abs() < 4 * (var / N).sqrt()).all()


def test_classifier_gradient_matches_the_closed_form():
    diffusion, oracle = setup()
    x = torch.randn(32, 2) * 2
    t = torch.randint(0, 100, (32,))
    y = torch.randint(0, 3, (32,))
    grad = ClassifierGradient(oracle.classifier, 2.5)(x, t, y)
    expected = 2.5 * oracle.grad_log_posterior(x, t, y)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps", [100, 10])
def test_ancestral_guidance_shifts_the_mean_by_sigma_grad(steps):
    """DDPM with cond_fn: x_{t-1} = mu(x_t) + s Sigma_t grad log p(y | x_t) + sqrt(Sigma_t) z
    (Dhariwal & Nichol, Algorithm 1), checked against a loop written from the closed forms."""
    diffusion, oracle = setup()
    scale = 3.0
    unconditional = Unconditional(oracle)
    got = draw(
        "ddpm",
        WithLabels(unconditional),
        diffusion,
        steps,
        LABELS,
        cond_fn=ClassifierGradient(oracle.classifier, scale),
    )
    sub = respaced(diffusion, steps, "even")
    noise = PerSampleNoise(list(range(N)))
    x = noise.randn((2,)).double()
    for i in range(steps - 1, -1, -1):
        a, a_prev = sub.alphas_cumprod[i], (sub.alphas_cumprod[i - 1] if i else torch.tensor(1.0))
        t = torch.full((N,), int(sub.timestep_map[i]))
        beta = 1 - a / a_prev
        eps = unconditional(x.float(), t).double()
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        mean = beta * a_prev.sqrt() / (1 - a) * x0 + (1 - a_prev) * (1 - beta).sqrt() / (1 - a) * x
        variance = beta * (1 - a_prev) / (1 - a)
        mean = mean + variance * scale * oracle.grad_log_posterior(x, t, LABELS)
        z = noise.randn_like(x.float()).double()
        x = mean + (variance.sqrt() * z if i else 0)
    torch.testing.assert_close(got.double(), x, rtol=1e-3, atol=1e-3)


def test_classifier_free_weights_one_and_zero_are_conditional_and_unconditional():
    diffusion, oracle = setup()
    x, t = torch.randn(N, 2), torch.randint(0, 100, (N,))
    torch.testing.assert_close(ClassifierFree(oracle, 1.0)(x, t, LABELS), oracle(x, t, LABELS))
    null = torch.full((N,), 3)
    torch.testing.assert_close(ClassifierFree(oracle, 0.0)(x, t, LABELS), oracle(x, t, null))


def test_classifier_free_runs_one_doubled_batch_and_keeps_the_conditional_variance():
    calls = []

    def model(x, t, y):
        calls.append(len(x))
        mean = y[:, None].float().expand(-1, 2)  # conditional 0..2, null branch 3
        return torch.cat([mean, 10 + mean], dim=1)  # + a "learned variance" part

    model.num_classes = 3
    out = ClassifierFree(model, 2.0)(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long),
                                     torch.tensor([0, 1, 2, 0]))  # fmt: skip
    assert calls == [8]
    cond = torch.tensor([0.0, 1.0, 2.0, 0.0])[:, None]
    torch.testing.assert_close(out[:, :2], (3 + 2 * (cond - 3)).expand(-1, 2))
    torch.testing.assert_close(out[:, 2:], (10 + cond).expand(-1, 2))


def test_classifier_free_refuses_an_unconditional_model():
    with pytest.raises(ValueError, match="class-conditional"):
        ClassifierFree(lambda x, t: x, 2.0)


def test_build_guidance_uses_the_mean_shift_for_ddpm_and_the_eps_shift_elsewhere(compose):
    diffusion, oracle = setup()
    unconditional = Unconditional(oracle)
    base = ["guidance=classifier", "guidance.scale=2"]
    model, cond_fn = build_guidance(
        compose([*base, "sampler=ddpm"], "sample"), unconditional, diffusion, oracle.classifier
    )
    assert isinstance(cond_fn, ClassifierGradient) and cond_fn.scale == 2.0
    assert isinstance(model, WithLabels)
    model, cond_fn = build_guidance(
        compose([*base, "sampler=ddim"], "sample"), unconditional, diffusion, oracle.classifier
    )
    assert cond_fn is None and isinstance(model, EpsShift)
    model, cond_fn = build_guidance(compose(["guidance=cfg"], "sample"), oracle, diffusion)
    assert isinstance(model, ClassifierFree) and model.scale == 3.0
