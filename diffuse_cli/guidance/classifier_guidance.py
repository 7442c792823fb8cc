"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis",
sec. 4): a classifier f_phi(y | x_t, t) trained on noised images steers sampling towards class y.

- Ancestral sampling (their Algorithm 1) shifts the mean of p(x_{t-1} | x_t) by
  s Sigma grad_x log f_phi(y | x_t, t); samplers.ddpm takes this as `cond_fn`.
- Deterministic samplers (their Algorithm 2, DDIM) shift the noise prediction:
  eps~ = eps - sqrt(1 - abar_t) s grad_x log f_phi(y | x_t, t), i.e. the score of
  p(x_t) f_phi(y | x_t)^s. EpsShift does this inside the model call, so DDIM, the ODE solvers
  and the predictor-corrector sampler all use it unchanged.
"""

import torch

from diffuse_cli.diffusion import gather


class ClassifierGradient:
    """cond_fn(x_t, t, y) = s * grad_x log f_phi(y | x_t, t), computed in float32 with autograd
    (also inside the samplers' torch.no_grad)."""

    def __init__(self, classifier, scale: float):
        self.classifier, self.scale = classifier, float(scale)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().float().requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(x_in, t).float(), dim=-1)
            chosen = log_probs[torch.arange(len(y), device=y.device), y].sum()
            (grad,) = torch.autograd.grad(chosen, x_in)
        return (self.scale * grad).to(x.dtype)


class EpsShift:
    """model(x_t, t, y) with eps replaced by eps - sqrt(1 - abar_t) cond_fn(x_t, t, y), returned in
    the network's own prediction type (eps, x0 or v); a learned variance passes unchanged.

    `diffusion` is the one the network was trained with, indexed by the original timesteps the
    samplers hand to the network (respaced samplers map their indices before calling).
    """

    def __init__(self, model, diffusion, cond_fn):
        self.model, self.diffusion, self.cond_fn = model, diffusion, cond_fn

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self.diffusion
        out = self.model(x, t, y)
        c = x.shape[1]
        x0, eps = d.model_output_to_x0_eps(out[:, :c], x, t)
        eps = eps - gather(d.sqrt_one_minus_alphas_cumprod, t, x) * self.cond_fn(x, t, y)
        x0 = d.predict_x0_from_eps(x, t, eps)
        mean = d.prediction.target(d, x0, eps, t).to(out.dtype)
        return torch.cat([mean, out[:, c:]], dim=1)
