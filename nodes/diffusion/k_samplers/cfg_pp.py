"""CFG++ samplers (Chung et al., 2024, "CFG++: Manifold-constrained Classifier Free Guidance"):
denoise with the guided estimate, re-noise with the *unconditional* one.

A DDIM step from σ to σ' is x' = α'·x0 + σ'·ε; plain CFG takes both x0 and ε from the guided
prediction, CFG++ takes x0 from the guided one and ε = (x - α·x0_uncond)/σ from the unconditional one.
Each sampler gets both estimates of a call from :func:`~nodes.diffusion.k_samplers.common.call_with_uncond`
(the negative side is evaluated even at cfg 1).  The forms are ComfyUI's:

* ``euler_ancestral_cfg_pp``: the DDIM-ancestral step above in the model's own α/σ (flow: α = 1 - σ),
  with σ_up of fresh noise from the run's generator; ``euler_cfg_pp`` is the same with η = 0 (no noise).
* ``dpmpp_2s_ancestral_cfg_pp``: DPM-Solver++(2S) on the unconditional estimates (the midpoint call
  contributes only its unconditional estimate), then the step's guidance (guided - unconditional, ×α'
  for flow models) is added back; flow models take the rectified-flow ancestral form.
* ``dpmpp_2m_cfg_pp``: DPM-Solver++(2M) in λ = -log σ with the unconditional estimate in the
  exponential part and the guided one as the step's target.
"""
from __future__ import annotations

import torch

from nodes.diffusion.k_samplers.common import (SamplerEnv, ancestral_step, call_with_uncond, half_log_snr,
                                               rf_ancestral, to_d)
from nodes.diffusion.noise import default_noise_sampler


def sample_euler_ancestral_cfg_pp(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0):
    noise = default_noise_sampler(x, env.seed)
    flow = env.flow
    for i in range(len(sigmas) - 1):
        denoised, uncond = call_with_uncond(model, x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * half_log_snr(sigmas[i], flow).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1], flow).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond)  # the unconditional noise direction
        sigma_down, sigma_up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        x = alpha_t * denoised + (alpha_t * sigma_down) * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_euler_cfg_pp(model, x, sigmas, env: SamplerEnv):
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, env, eta=0.0, s_noise=0.0)


def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0):
    noise = default_noise_sampler(x, env.seed)
    if env.flow:
        return _dpmpp_2s_ancestral_cfg_pp_rf(model, x, sigmas, env, noise, eta, s_noise)
    for i in range(len(sigmas) - 1):
        denoised, uncond = call_with_uncond(model, x, sigmas[i])
        guidance = denoised - uncond
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        env.report(i, x, denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], uncond) * (sigma_down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * uncond
            _, uncond_2 = call_with_uncond(model, x_2, s.neg().exp())
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * uncond_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        x = x + guidance  # α = 1
    return x


def _dpmpp_2s_ancestral_cfg_pp_rf(model, x, sigmas, env, noise, eta, s_noise):
    for i in range(len(sigmas) - 1):
        denoised, uncond = call_with_uncond(model, x, sigmas[i])
        guidance = denoised - uncond
        sigma_down, alpha_ratio, renoise = rf_ancestral(sigmas[i], sigmas[i + 1], eta)
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], uncond) * (sigma_down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s = torch.as_tensor(0.9999, dtype=sigmas.dtype, device=sigmas.device)
            else:
                lam_i = ((1 - sigmas[i]) / sigmas[i]).log()
                lam_down = ((1 - sigma_down) / sigma_down).log()
                sigma_s = (lam_i + 0.5 * (lam_down - lam_i)).exp().add(1).reciprocal()
            ratio_s = sigma_s / sigmas[i]
            _, uncond_2 = call_with_uncond(model, ratio_s * x + (1 - ratio_s) * uncond, sigma_s)
            ratio_down = sigma_down / sigmas[i]
            x = ratio_down * x + (1 - ratio_down) * uncond_2
        if sigmas[i + 1] > 0 and eta > 0:
            x = alpha_ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
        x = x + (1 - sigmas[i + 1]) * guidance  # α' = 1 - σ'
    return x


def sample_dpmpp_2m_cfg_pp(model, x, sigmas, env: SamplerEnv):
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised, uncond = call_with_uncond(model, x, sigmas[i])
        env.report(i, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        decay = torch.exp(-h)
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -decay * uncond
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            mix = -decay * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + decay * x
        old_uncond = uncond
    return x
