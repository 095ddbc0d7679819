"""The DPM-Solver++ family (Lu et al., 2022) in ComfyUI's forms: data prediction, steps in the
half-log-SNR λ.

* ``dpmpp_2s_ancestral``: single-step second order to σ_down (midpoint in λ), then σ_up of fresh noise
  from the run's generator; flow models take the rectified-flow form.
* ``dpmpp_2m``: the two-step multistep form (λ = -log σ).
* ``dpmpp_sde``: the stochastic single-step form (r = 1/2) with Brownian-tree noise at the midpoint and
  the end of each step.
* ``dpmpp_2m_sde`` (midpoint or Heun correction) and ``dpmpp_3m_sde``: multistep SDE solvers, η = 1,
  Brownian-tree noise; the ``_gpu`` names keep the tree on the sampling device.

The SDE forms use the model's own λ (flow models: log((1 - σ)/σ)) and start flow schedules a hair
below σ = 1.
"""
from __future__ import annotations

import torch

from nodes.diffusion.k_samplers.common import (SamplerEnv, ancestral_step, brownian_noise, derivative,
                                               half_log_snr, offset_first_sigma, rf_ancestral, sigma_of)
from nodes.diffusion.noise import default_noise_sampler


def sample_dpmpp_2s_ancestral(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0):
    noise = default_noise_sampler(x, env.seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if env.flow:
            sigma_down, alpha_ratio, renoise = rf_ancestral(sigmas[i], sigmas[i + 1], eta)
            if sigmas[i + 1] == 0:
                x = x + derivative(model, x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            else:
                if sigmas[i] == 1.0:
                    sigma_s = torch.as_tensor(0.9999, dtype=sigmas.dtype, device=sigmas.device)
                else:
                    lam_i = ((1 - sigmas[i]) / sigmas[i]).log()
                    lam_down = ((1 - sigma_down) / sigma_down).log()
                    sigma_s = (lam_i + 0.5 * (lam_down - lam_i)).exp().add(1).reciprocal()
                ratio_s = sigma_s / sigmas[i]
                u = ratio_s * x + (1 - ratio_s) * denoised
                denoised_2 = model(u, sigma_s)
                ratio_down = sigma_down / sigmas[i]
                x = ratio_down * x + (1 - ratio_down) * denoised_2
            if sigmas[i + 1] > 0 and eta > 0:
                x = alpha_ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
            continue
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + derivative(model, x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, s.neg().exp())
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_dpmpp_sde(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5,
                     cpu_tree: bool = True):
    if len(sigmas) <= 1:
        return x
    noise = brownian_noise(x, sigmas, env, cpu_tree)
    flow = env.flow
    sigmas = offset_first_sigma(sigmas, env)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
        h = lam_t - lam_s
        lam_s1 = lam_s + r * h
        fac = 1 / (2 * r)
        sigma_s1 = sigma_of(lam_s1, flow)
        alpha_s = sigmas[i] * lam_s.exp()
        alpha_s1 = sigma_s1 * lam_s1.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # step 1, to the intermediate point
        sd, su = ancestral_step(lam_s.neg().exp(), lam_s1.neg().exp(), eta)
        h_ = sd.log().neg() - lam_s
        x_2 = (alpha_s1 / alpha_s) * (-h_).exp() * x - alpha_s1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s1 * noise(sigmas[i], sigma_s1) * s_noise * su
        denoised_2 = model(x_2, sigma_s1)
        # step 2
        sd, su = ancestral_step(lam_s.neg().exp(), lam_t.neg().exp(), eta)
        h_ = sd.log().neg() - lam_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


def sample_dpmpp_2m(model, x, sigmas, env: SamplerEnv):
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint", cpu_tree: bool = True):
    if len(sigmas) <= 1:
        return x
    noise = brownian_noise(x, sigmas, env, cpu_tree)
    flow = env.flow
    sigmas = offset_first_sigma(sigmas, env)
    old_denoised = None
    h = h_last = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_3m_sde(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0,
                        cpu_tree: bool = True):
    if len(sigmas) <= 1:
        return x
    noise = brownian_noise(x, sigmas, env, cpu_tree)
    flow = env.flow
    sigmas = offset_first_sigma(sigmas, env)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
            h = lam_t - lam_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lam_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                d = (denoised - denoised_1) / (h_1 / h)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            if eta > 0 and s_noise > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x
