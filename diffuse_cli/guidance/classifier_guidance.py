"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis",
sec. 4): a classifier f_phi(y | x_t, t) trained on noised images steers sampling towards class y.

- Ancestral sampling (their Algorithm 1) shifts the mean of p(x_{t-1} | x_t) by
  s Sigma grad_x log f_phi(y | x_t, t); samplers.ddpm takes this as `cond_fn`.
- Deterministic samplers (their Algorithm 2, DDIM) shift the noise prediction:
  eps~ = eps - sqrt(1 - abar_t) s grad_x log f_phi(y | x_t, t), i.e. the score of
  p(x_t) f_phi(y | x_t)^s. EpsShift does this inside the model call, so DDIM, the ODE solvers
  and the predictor-corrector sampler all use it unchanged.
- EDM runs (schedule=edm) shift the denoiser by the same score term: D~ = D + sigma^2 s grad_x
  log f_phi(y | x; sigma), since D = x + sigma^2 grad log p_sigma (Tweedie); DenoiserShift.
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


class DenoiserShift:
    """model(c_in x, c_noise, y) of an EDM run with its output F shifted so that the denoiser
    D = c_skip x + c_out F becomes D + sigma^2 cond_fn, the score shift of classifier guidance.

    The classifier sees what the network sees (c_in x, c_noise), so cond_fn is the gradient with
    respect to c_in x, and grad_x = c_in grad_{c_in x}; with c_in / c_out = 1 / (sigma sigma_data)
    the shift of F is (sigma / sigma_data) cond_fn. `edm` is the run's EDMDiffusion.
    """

    def __init__(self, model, edm, cond_fn):
        self.model, self.edm, self.cond_fn = model, edm, cond_fn

    def __call__(self, x_in: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.model(x_in, c_noise, y)
        sigma = self.edm.sigma_of_noise_label(c_noise.float())
        scale = (sigma / self.edm.sigma_data).reshape(-1, *([1] * (x_in.dim() - 1)))
        return out + (scale * self.cond_fn(x_in, c_noise, y).float()).to(out.dtype)
