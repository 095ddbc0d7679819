"""Stochastic exponential integrators in data prediction: ER-SDE and SEEDS.  Their noise comes from the
run's generator (:func:`~nodes.diffusion.noise.default_noise_sampler`: seed + 1 on the CPU), one draw
of the batch's shape per noise term, in the order below; the last step to σ = 0 jumps to the estimate
and draws nothing.  Both work in the model's own half-log-SNR λ (flow models start a hair below σ = 1).

**ER-SDE** (Cui et al., 2023, arXiv:2309.06169: VP ER-SDE-Solver-3).  With the "noise-to-signal"
time ℓ = σ/α = e^{-λ} and the noise scaler φ(ℓ) = ℓ·(e^{ℓ^0.3} + 10), a step from ℓ_s to ℓ_t is

    x_t = (α_t/α_s)(φ_t/φ_s)·x_s + α_t(1 - φ_t/φ_s)·D_s
          + α_t(Δℓ + φ_t·∫ dℓ/φ(ℓ))·D′ + α_t(Δℓ²/2 + φ_t·∫ (ℓ - ℓ_s)/φ(ℓ) dℓ)·D″
          + α_t·√(ℓ_t² - ℓ_s²(φ_t/φ_s)²)·z

(integrals over [ℓ_t, ℓ_s] by a 200-point sum from ℓ_t; D′, D″ divided differences of the estimates
in ℓ, the second over half the two-step span; stage 1, 2, 3 as the history allows).  One draw per step.

**SEEDS** (Gonzalez et al., 2023, arXiv:2305.14267: VP data prediction, η = 1).  ``seeds_2`` takes an
intermediate point at λ_s + r·h (r = 1/2), ``seeds_3`` two (r₁ = 1/3, r₂ = 2/3).  Each stage is
x_u = (σ_u/σ_s)e^{-r h η}·x_s - α_u·(e^{-r h (1+η)} - 1)·(combination of the estimates so far)
plus the noise σ_u·n_u, where n_u carries the previous stage's noise forward (×e^{(r_prev - r)hη})
and adds √(1 - e^{2(r_prev - r)hη}) of a fresh draw — so one draw per stage: two per step for
``seeds_2``, three for ``seeds_3``.
"""
from __future__ import annotations

import torch

from nodes.diffusion.k_samplers.common import (SamplerEnv, h_phi_1, h_phi_2, half_log_snr, offset_first_sigma,
                                               sigma_of)
from nodes.diffusion.noise import default_noise_sampler

ER_SDE_INTEGRATION_POINTS = 200


def er_sde_noise_scaler(ell: torch.Tensor) -> torch.Tensor:
    """ER-SDE's default noise scaler φ(ℓ) = ℓ·(e^{ℓ^0.3} + 10)."""
    return ell * ((ell ** 0.3).exp() + 10.0)


def sample_er_sde(model, x, sigmas, env: SamplerEnv, s_noise: float = 1.0, max_stage: int = 3,
                  noise_scaler=er_sde_noise_scaler):
    noise = default_noise_sampler(x, env.seed)
    points = torch.arange(0, ER_SDE_INTEGRATION_POINTS, dtype=torch.float32, device=x.device)
    sigmas = offset_first_sigma(sigmas, env)
    ells = half_log_snr(sigmas, env.flow).neg().exp()  # ℓ = σ/α
    old_denoised = old_slope = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            ell_s, ell_t = ells[i], ells[i + 1]
            alpha_s, alpha_t = sigmas[i] / ell_s, sigmas[i + 1] / ell_t
            r = noise_scaler(ell_t) / noise_scaler(ell_s)
            x = (alpha_t / alpha_s) * r * x + alpha_t * (1 - r) * denoised
            if stage >= 2:
                d_ell = ell_t - ell_s
                step = -d_ell / ER_SDE_INTEGRATION_POINTS
                nodes = ell_t + points * step
                scaled = noise_scaler(nodes)
                integral = torch.sum(1 / scaled) * step
                slope = (denoised - old_denoised) / (ell_s - ells[i - 1])
                x = x + alpha_t * (d_ell + integral * noise_scaler(ell_t)) * slope
                if stage >= 3:
                    integral_u = torch.sum((nodes - ell_s) / scaled) * step
                    curvature = (slope - old_slope) / ((ell_s - ells[i - 2]) / 2)
                    x = x + alpha_t * ((d_ell ** 2) / 2 + integral_u * noise_scaler(ell_t)) * curvature
                old_slope = slope
            if s_noise > 0:
                spread = (ell_t ** 2 - ell_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * spread
        old_denoised = denoised
    return x


def sample_seeds_2(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5,
                   solver_type: str = "phi_1"):
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError("seeds_2: solver_type must be 'phi_1' or 'phi_2'")
    noise = default_noise_sampler(x, env.seed)
    inject = eta > 0 and s_noise > 0
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
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = sigma_of(lam_1, flow)
        alpha_1 = sigma_1 * lam_1.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # stage 1, to λ_s + r·h
        x_1 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * h_phi_1(-r * h_eta) * denoised
        if inject:
            carried = (-2 * r * h * eta).expm1().neg().sqrt() * noise(sigmas[i], sigma_1)
            x_1 = x_1 + carried * sigma_1 * s_noise
        denoised_1 = model(x_1, sigma_1)
        # stage 2, to λ_t
        if solver_type == "phi_1":
            target = torch.lerp(denoised, denoised_1, 1 / (2 * r))
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * h_phi_1(-h_eta) * target
        else:
            b2 = h_phi_2(-h_eta) / r
            b1 = h_phi_1(-h_eta) - b2
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_1)
        if inject:
            segment = (r - 1) * h * eta
            carried = carried * segment.exp() + segment.mul(2).expm1().neg().sqrt() * noise(sigma_1, sigmas[i + 1])
            x = x + carried * sigmas[i + 1] * s_noise
    return x


def sample_seeds_3(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0, r_1: float = 1 / 3,
                   r_2: float = 2 / 3):
    noise = default_noise_sampler(x, env.seed)
    inject = eta > 0 and s_noise > 0
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
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = sigma_of(lam_1, flow), sigma_of(lam_2, flow)
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        # stage 1, to λ_s + r₁·h
        x_1 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            carried = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise(sigmas[i], sigma_1)
            x_1 = x_1 + carried * sigma_1 * s_noise
        denoised_1 = model(x_1, sigma_1)
        # stage 2, to λ_s + r₂·h
        a_2 = r_2 / r_1 * h_phi_2(-r_2 * h_eta)
        a_1 = h_phi_1(-r_2 * h_eta) - a_2
        x_2 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a_1 * denoised + a_2 * denoised_1)
        if inject:
            segment = (r_1 - r_2) * h * eta
            carried = carried * segment.exp() + segment.mul(2).expm1().neg().sqrt() * noise(sigma_1, sigma_2)
            x_2 = x_2 + carried * sigma_2 * s_noise
        denoised_2 = model(x_2, sigma_2)
        # stage 3, to λ_t
        b_3 = h_phi_2(-h_eta) / r_2
        b_1 = h_phi_1(-h_eta) - b_3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b_1 * denoised + b_3 * denoised_2)
        if inject:
            segment = (r_2 - 1) * h * eta
            carried = carried * segment.exp() + segment.mul(2).expm1().neg().sqrt() * noise(sigma_2, sigmas[i + 1])
            x = x + carried * sigmas[i + 1] * s_noise
    return x
