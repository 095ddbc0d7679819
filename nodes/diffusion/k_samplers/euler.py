"""Steps of the Karras ODE dx/dσ = (x - denoised)/σ: Euler, Heun, DPM-2, linear multistep, and their
ancestral (re-noising) and gradient-estimation variants.

* ``euler``, ``heun``, ``dpm_2``, ``euler_ancestral``, ``dpm_2_ancestral``: Karras et al. (2022),
  Algorithm 2 without churn; the ancestral forms step to σ_down and add σ_up of fresh noise
  (flow models: the rectified-flow forms, which shrink x by α_next/α_down before re-noising).
* ``lms``: Adams–Bashforth of order ≤ 4 in σ, its weights integrated numerically (scipy ``quad``).
* ``heunpp2``: Heun++ (Carzit's sd-webui-samplers-scheduler, as ComfyUI runs it): three evaluations
  per step, at σ_i, σ_{i+1} and σ_{i+2}, weighted 1 - w₂ - w₃, w₂ = σ_{i+1}/(3σ_0), w₃ = σ_{i+2}/(3σ_0);
  Heun with w₂ = σ_{i+1}/(2σ_0) on the step before the last, Euler on the last.
* ``gradient_estimation`` (Permenter & Yuan, "Interpreting and Improving Diffusion Models from an
  Optimization Perspective"): Euler plus (γ - 1)·(d_i - d_{i-1})·Δσ, γ = 2; the CFG++ form takes the
  derivative from the unconditional estimate and steps from the guided one.

With ``s_churn`` at 0 (ComfyUI's default, the only setting its sampler names reach) the churn noise of
Karras' algorithm never enters, so none is drawn.
"""
from __future__ import annotations

import torch

from nodes.diffusion.k_samplers.common import (SamplerEnv, ancestral_step, call_with_uncond, derivative,
                                               log_midpoint, rf_ancestral, to_d)
from nodes.diffusion.noise import default_noise_sampler


def sample_euler(model, x, sigmas, env: SamplerEnv):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = derivative(model, x, sigmas[i], denoised)
        env.report(i, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        x = x + d * dt
    return x


def sample_euler_ancestral(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0):
    noise = default_noise_sampler(x, env.seed)
    if env.flow:
        return _euler_ancestral_rf(model, x, sigmas, env, noise, eta, s_noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        env.report(i, x, denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = derivative(model, x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _euler_ancestral_rf(model, x, sigmas, env, noise, eta, s_noise):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down, alpha_ratio, renoise = rf_ancestral(sigmas[i], sigmas[i + 1], eta)
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = alpha_ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def sample_heun(model, x, sigmas, env: SamplerEnv):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = derivative(model, x, sigmas[i], denoised)
        env.report(i, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1])
            d_2 = derivative(model, x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


def sample_heunpp2(model, x, sigmas, env: SamplerEnv):
    last = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = derivative(model, x, sigmas[i], denoised)
        env.report(i, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == last:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        denoised_2 = model(x_2, sigmas[i + 1])
        d_2 = derivative(model, x_2, sigmas[i + 1], denoised_2)
        if sigmas[i + 2] == last:
            w_2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w_2) + d_2 * w_2) * dt
            continue
        x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
        denoised_3 = model(x_3, sigmas[i + 2])
        d_3 = derivative(model, x_3, sigmas[i + 2], denoised_3)
        w_2, w_3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
        x = x + ((1 - w_2 - w_3) * d + w_2 * d_2 + w_3 * d_3) * dt
    return x


def sample_dpm_2(model, x, sigmas, env: SamplerEnv):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = derivative(model, x, sigmas[i], denoised)
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = log_midpoint(sigmas[i], sigmas[i + 1])
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid)
            d_2 = derivative(model, x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def sample_dpm_2_ancestral(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0):
    noise = default_noise_sampler(x, env.seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if env.flow:
            sigma_down, alpha_ratio, renoise = rf_ancestral(sigmas[i], sigmas[i + 1], eta)
        else:
            sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        env.report(i, x, denoised)
        d = derivative(model, x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
            continue
        sigma_mid = log_midpoint(sigmas[i], sigma_down)
        x_2 = x + d * (sigma_mid - sigmas[i])
        denoised_2 = model(x_2, sigma_mid)
        d_2 = derivative(model, x_2, sigma_mid, denoised_2)
        x = x + d_2 * (sigma_down - sigmas[i])
        if env.flow:
            x = alpha_ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
        else:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coefficient(order: int, t, i: int, j: int) -> float:
    from scipy import integrate

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def sample_lms(model, x, sigmas, env: SamplerEnv, order: int = 4):
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ds.append(derivative(model, x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur = min(i + 1, order)
            coeffs = [_lms_coefficient(cur, sigmas_cpu, i, j) for j in range(cur)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def sample_gradient_estimation(model, x, sigmas, env: SamplerEnv, ge_gamma: float = 2.0, cfg_pp: bool = False):
    old_d = None
    for i in range(len(sigmas) - 1):
        if cfg_pp:
            denoised, uncond = call_with_uncond(model, x, sigmas[i])
            d = to_d(x, sigmas[i], uncond)
        else:
            denoised = model(x, sigmas[i])
            d = derivative(model, x, sigmas[i], denoised)
        env.report(i, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x
