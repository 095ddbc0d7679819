"""The sampler algorithms, in the k-diffusion convention ComfyUI uses.

Each sampler takes ``model(x, σ) → denoised`` (the guided x0 estimate), the starting state ``x``
(already noised to ``sigmas[0]``), the descending schedule ``sigmas`` and a :class:`SamplerEnv`
(seed, the model's :class:`~nodes.diffusion.model_sampling.ModelSampling`, the per-step callback),
and returns the state at ``sigmas[-1]``.  The update rules are the published ones — Karras et al.
(2022) for Euler/Heun/DPM2, DPM-Solver++ (Lu et al., 2022) for the ``dpmpp_*`` family, UniPC (Zhao
et al., 2023) — in the form and with the noise ComfyUI's ``comfy/k_diffusion/sampling.py`` and
``comfy/extra_samplers/uni_pc.py`` give them (read for the facts; this is our own code):

* flow models (FLUX) take the rectified-flow forms of the ancestral samplers and the half-log-SNR
  λ = log((1 - σ)/σ) in the SDE samplers (λ = -log σ for SD);
* ancestral samplers draw their step noise from :func:`~nodes.diffusion.noise.default_noise_sampler`,
  the SDE samplers from a :class:`~nodes.diffusion.noise.BrownianTreeNoiseSampler` over the run's
  σ range, both seeded with the run's seed;
* ``ddim`` is Euler (its difference, random inpainting noise, lives in the sampling loop);
* ``uni_pc`` / ``uni_pc_bh2`` run UniPC's multistep predictor-corrector (order ≤ 3, B(h) = h or
  e^h - 1) in variance-preserving space down to σ = 0.001 instead of 0.

Where a derivative (x - denoised)/σ is needed the model may supply it exactly (``model.derivative``):
for flow models that is the velocity the network predicted, the quantity diffusers' flow schedulers
step with, so the round trip through the denoised estimate adds no rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from nodes.diffusion.model_sampling import ModelSampling
from nodes.diffusion.noise import BrownianTreeNoiseSampler, NoiseSampler, default_noise_sampler

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, x, denoised)


@dataclass
class SamplerEnv:
    model_sampling: ModelSampling
    seed: int | None = None
    callback: Callback | None = None

    @property
    def flow(self) -> bool:
        return self.model_sampling.kind == "flow"

    def report(self, i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback(i, x, denoised)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The Karras ODE derivative dx/dσ = (x - denoised)/σ."""
    return (x - denoised) / sigma


def _derivative(model: Any, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    exact = getattr(model, "derivative", None)
    return exact(x, sigma, denoised) if exact is not None else to_d(x, sigma, denoised)


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """(σ_down, σ_up): step deterministically to σ_down, then add σ_up of fresh noise to reach σ_to."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _brownian(x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv, cpu: bool) -> NoiseSampler:
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=env.seed, cpu=cpu)


def _half_log_snr(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """λ = log(α/σ): -log σ for SD, log((1 - σ)/σ) for flow models."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def _sigma_of(lam: torch.Tensor, flow: bool) -> torch.Tensor:
    return lam.neg().sigmoid() if flow else lam.neg().exp()


def _offset_first_sigma(sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    """Flow models: σ = 1 has λ = -∞; start a hair below it, at the 0.01 % point of the schedule."""
    if env.flow and len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = env.model_sampling.percent_to_sigma(1e-4)
    return sigmas


# ---------------------------------------------------------------------------------------------
# first-order and Heun-type samplers

def sample_euler(model, x, sigmas, env: SamplerEnv):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = _derivative(model, x, sigmas[i], denoised)
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
            d = _derivative(model, x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _rf_ancestral(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float):
    """Rectified-flow ancestral step: (σ_down, α_next/α_down, renoise coefficient)."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


def _euler_ancestral_rf(model, x, sigmas, env, noise, eta, s_noise):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down, alpha_ratio, renoise = _rf_ancestral(sigmas[i], sigmas[i + 1], eta)
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = alpha_ratio * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


def sample_heun(model, x, sigmas, env: SamplerEnv):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = _derivative(model, x, sigmas[i], denoised)
        env.report(i, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1])
            d_2 = _derivative(model, x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


def _log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.log().lerp(b.log(), 0.5).exp()


def sample_dpm_2(model, x, sigmas, env: SamplerEnv):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = _derivative(model, x, sigmas[i], denoised)
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = _log_midpoint(sigmas[i], sigmas[i + 1])
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid)
            d_2 = _derivative(model, x_2, sigma_mid, denoised_2)
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def sample_dpm_2_ancestral(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0):
    noise = default_noise_sampler(x, env.seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if env.flow:
            sigma_down, alpha_ratio, renoise = _rf_ancestral(sigmas[i], sigmas[i + 1], eta)
        else:
            sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        env.report(i, x, denoised)
        d = _derivative(model, x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
            continue
        sigma_mid = _log_midpoint(sigmas[i], sigma_down)
        x_2 = x + d * (sigma_mid - sigmas[i])
        denoised_2 = model(x_2, sigma_mid)
        d_2 = _derivative(model, x_2, sigma_mid, denoised_2)
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
        ds.append(_derivative(model, x, sigmas[i], denoised))
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


# ---------------------------------------------------------------------------------------------
# DPM-Solver++ family

def sample_dpmpp_2s_ancestral(model, x, sigmas, env: SamplerEnv, eta: float = 1.0, s_noise: float = 1.0):
    noise = default_noise_sampler(x, env.seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if env.flow:
            sigma_down, alpha_ratio, renoise = _rf_ancestral(sigmas[i], sigmas[i + 1], eta)
            if sigmas[i + 1] == 0:
                x = x + _derivative(model, x, sigmas[i], denoised) * (sigma_down - sigmas[i])
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
            x = x + _derivative(model, x, sigmas[i], denoised) * (sigma_down - sigmas[i])
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
    noise = _brownian(x, sigmas, env, cpu_tree)
    flow = env.flow
    sigmas = _offset_first_sigma(sigmas, env)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _half_log_snr(sigmas[i], flow), _half_log_snr(sigmas[i + 1], flow)
        h = lam_t - lam_s
        lam_s1 = lam_s + r * h
        fac = 1 / (2 * r)
        sigma_s1 = _sigma_of(lam_s1, flow)
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
    noise = _brownian(x, sigmas, env, cpu_tree)
    flow = env.flow
    sigmas = _offset_first_sigma(sigmas, env)
    old_denoised = None
    h = h_last = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = _half_log_snr(sigmas[i], flow), _half_log_snr(sigmas[i + 1], flow)
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
    noise = _brownian(x, sigmas, env, cpu_tree)
    flow = env.flow
    sigmas = _offset_first_sigma(sigmas, env)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        env.report(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = _half_log_snr(sigmas[i], flow), _half_log_snr(sigmas[i + 1], flow)
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


# ---------------------------------------------------------------------------------------------
# DDPM, LCM

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


# ---------------------------------------------------------------------------------------------
# UniPC

def _vp_log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _vp(sigma: torch.Tensor):
    """(α, std, λ) of the variance-preserving process whose σ_k-diffusion is ``sigma``."""
    log_alpha = _vp_log_alpha(sigma)
    alpha = torch.exp(log_alpha)
    std = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
    lam = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
    return alpha, std, lam


class _UniPC:
    """UniPC's multistep B(h) predictor-corrector on the data prediction, in VP space."""

    def __init__(self, model, variant: str) -> None:
        self.model = model
        self.variant = variant

    def data_prediction(self, x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        k_input = x_vp * ((sigma ** 2 + 1.0) ** 0.5)
        eps = (k_input - self.model(k_input, sigma)) / sigma
        alpha, std, _ = _vp(sigma)
        return (x_vp - std * eps) / alpha

    def update(self, x, model_prev, t_prev, t, order, use_corrector):
        _, std_prev, lam_prev = _vp(t_prev[-1])
        alpha_t, std_t, lam_t = _vp(t)
        m0 = model_prev[-1]
        h = lam_t - lam_prev
        rks, d1s = [], []
        for i in range(1, order):
            rk = (_vp(t_prev[-(i + 1)])[2] - lam_prev) / h
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        rks_t = torch.tensor(rks, device=x.device)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_mat = torch.stack(rows)
        b_vec = torch.tensor(b, device=x.device)
        stacked = torch.stack(d1s, dim=1) if d1s else None
        x_t_ = (std_t / std_prev) * x - (alpha_t * h_phi_1) * m0
        if stacked is not None:
            rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1],
                                                                                              b_vec[:-1])
            pred_res = torch.einsum("k,bkchw->bchw", rhos_p, stacked)
        else:
            pred_res = 0
        x_t = x_t_ - (alpha_t * b_h) * pred_res
        model_t = None
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(r_mat, b_vec)
            model_t = self.data_prediction(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], stacked) if stacked is not None else 0
            x_t = x_t_ - (alpha_t * b_h) * (corr_res + rhos_c[-1] * (model_t - m0))
        return x_t, model_t


def sample_unipc(model, x, sigmas, env: SamplerEnv, variant: str = "bh1"):
    """UniPC (ComfyUI's form).  A schedule ending at 0 ends at σ = 0.001 instead: ``sigmas[-1]`` is set
    to 0.001 *in place*, as ComfyUI does, so the caller's final rescaling sees the same value."""
    if sigmas[-1] == 0:
        sigmas[-1] = 0.001
    ts = sigmas
    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    solver = _UniPC(model, variant)
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)
    model_prev: list[torch.Tensor] = []
    t_prev: list[torch.Tensor] = []
    for step_index in range(steps):
        if step_index == 0:
            model_prev, t_prev = [solver.data_prediction(x, ts[0])], [ts[0]]
        elif step_index < order:
            t = ts[step_index]
            x, model_x = solver.update(x, model_prev, t_prev, t, step_index, use_corrector=True)
            if model_x is None:
                model_x = solver.data_prediction(x, t)
            model_prev.append(model_x)
            t_prev.append(t)
        else:
            last = step_index + (2 if step_index == steps - 1 else 1)
            for step in range(step_index, last):
                t = ts[step]
                step_order = min(order, steps + 1 - step)
                x, model_x = solver.update(x, model_prev, t_prev, t, step_order, use_corrector=step != steps)
                for i in range(order - 1):
                    t_prev[i] = t_prev[i + 1]
                    model_prev[i] = model_prev[i + 1]
                t_prev[-1] = t
                if step < steps:
                    if model_x is None:
                        model_x = solver.data_prediction(x, t)
                    model_prev[-1] = model_x
        env.report(step_index, x, model_prev[-1])
    return x / _vp(ts[-1])[0]


# ---------------------------------------------------------------------------------------------
# the name → function table

def _with(fn, **options):
    def run(model, x, sigmas, env):
        return fn(model, x, sigmas, env, **options)
    run.__name__ = fn.__name__
    return run


SAMPLER_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": _with(sample_dpmpp_sde, cpu_tree=False),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": _with(sample_dpmpp_2m_sde, cpu_tree=False),
    "dpmpp_2m_sde_heun": _with(sample_dpmpp_2m_sde, solver_type="heun"),
    "dpmpp_2m_sde_heun_gpu": _with(sample_dpmpp_2m_sde, solver_type="heun", cpu_tree=False),
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": _with(sample_dpmpp_3m_sde, cpu_tree=False),
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ddim": sample_euler,
    "uni_pc": _with(sample_unipc, variant="bh1"),
    "uni_pc_bh2": _with(sample_unipc, variant="bh2"),
}
# samplers whose inpainting blend uses separate noise (seed + 1), not the initial noise (ComfyUI's ddim)
RANDOM_INPAINT_NOISE = frozenset({"ddim"})
