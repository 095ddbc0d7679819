"""DDPM and LCM: samplers that jump to the x0 estimate and re-noise it with the run's generator.

* ``ddpm``: the DDPM posterior step (Ho et al., 2020) taken in variance-preserving space
  (x_vp = x/√(1 + σ²)), its noise from the run's generator.
* ``lcm``: Latent Consistency Model steps: the next state is the estimate re-noised to the next σ by
  the model's own noise scaling.
"""
from __future__ import annotations

import torch

from nodes.diffusion.k_samplers.common import SamplerEnv
from nodes.diffusion.noise import default_noise_sampler


def sample_ddpm(model, x, sigmas, env: SamplerEnv):
    """Ancestral DDPM steps, taken in variance-preserving space."""
    noise = default_noise_sampler(x, env.seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma ** 2.0)
        alpha_cumprod = 1 / ((sigma * sigma) + 1)
        alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
        if sigma_prev > 0:
            mu += ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise(sigma, sigma_prev)
            mu *= torch.sqrt(1.0 + sigma_prev ** 2.0)
        x = mu
    return x


def sample_lcm(model, x, sigmas, env: SamplerEnv):
    """Latent Consistency Model steps: jump to the estimate, re-noise it to the next σ."""
    noise = default_noise_sampler(x, env.seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = env.model_sampling.noise_scaling(sigmas[i + 1], noise(sigmas[i], sigmas[i + 1]), x)
    return x
