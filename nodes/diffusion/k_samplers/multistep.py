"""Multistep solvers: one model call per step, earlier steps' derivatives reused.

* ``ipndm`` (improved PNDM, Zhang & Chen 2023; the zju-pi diff-solvers form): Adams–Bashforth in σ on
  d = (x - denoised)/σ with the fixed-step weights of order 1…4 ((3, -1)/2, (23, -16, 5)/12,
  (55, -59, 37, -9)/24), the order growing with the history; the last step to σ = 0 jumps to the
  estimate.
* ``ipndm_v``: the same with iPNDM-v's variable-step weights for the actual σ spacing
  (:func:`variable_ab_weights`): Adams–Bashforth's at order 2, at order 3 for equal steps (and exact
  for a linear derivative on any spacing); its order-4 weights are the zju-pi code's, which ComfyUI
  runs as they are: (57, -65, 43, -11)/24 for equal steps, not summing to 1 for unequal ones.
* ``deis`` (Zhang & Chen, 2023, "tab" mode of the zju-pi PyTorch port): the schedule is mapped to the
  time t of a VP process (β_min, β_d fitted to σ ∈ [0.002, 80] over t ∈ [10⁻³, 1]); the weight of
  derivative d_{i-j} in step i is ∫ dσ/dt(τ)·L_j(τ) dτ over [t_i, t_{i+1}], L_j the Lagrange basis
  on t_i, t_{i-1}, …, integrated by a 10,000-point sum; order ≤ 3, Euler on the last step.
* ``res_multistep`` (the second-order multistep exponential integrator of Zhang et al., 2023,
  arXiv:2308.02157): in λ = -log σ, x' = e^{-h}x + h·(b₁·denoised + b₂·denoised_prev) with
  b₂ = φ₂(-h)/c₂, b₁ = φ₁(-h) - b₂, c₂ = (λ_{i-1} - λ(σ_down,prev))/h; Euler on the first and last
  steps.  ``_ancestral`` steps to σ_down and adds σ_up of fresh noise from the run's generator (η = 1);
  ``_cfg_pp`` integrates the unconditional estimate and adds the step's guidance (guided -
  unconditional) to x first.
"""
from __future__ import annotations

import torch

from nodes.diffusion.k_samplers.common import SamplerEnv, ancestral_step, call_with_uncond, derivative, to_d
from nodes.diffusion.noise import default_noise_sampler

# Adams–Bashforth weights for equal steps, newest derivative first
AB_WEIGHTS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def sample_ipndm(model, x, sigmas, env: SamplerEnv, max_order: int = 4):
    history: list[torch.Tensor] = []  # earlier derivatives, oldest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        env.report(i, x, denoised)
        d = derivative(model, x, sigma, denoised)
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x_next = denoised
        else:
            weights = AB_WEIGHTS[order]
            slope = weights[0] * d
            for w, older in zip(weights[1:], reversed(history)):
                slope = slope + w * older
            x_next = x + (sigma_next - sigma) * slope
        history = (history + [d])[-(max_order - 1):]
        x = x_next
    return x


def variable_ab_weights(h: list) -> tuple:
    """Variable-step Adams–Bashforth weights (newest derivative first) for steps h = [h_n, h_{n-1}, …]
    (signed σ differences, newest first; len(h) = order), in iPNDM-v's closed forms."""
    order = len(h)
    if order == 1:
        return (1.0,)
    h_n, h_1 = h[0], h[1]
    c1 = (2 + h_n / h_1) / 2
    c2 = -(h_n / h_1) / 2
    if order == 2:
        return c1, c2
    h_2 = h[2]
    temp1 = (1 - h_n / (3 * (h_n + h_1)) * (h_n * (h_n + h_1)) / (h_1 * (h_1 + h_2))) / 2
    if order == 3:
        return c1 + temp1, c2 - (1 + h_1 / h_2) * temp1, temp1 * h_1 / h_2
    h_3 = h[3]
    ratio = h_1 * (h_1 + h_2) / (h_2 * (h_2 + h_3))
    temp2 = (((1 - h_n / (3 * (h_n + h_1))) / 2 + (1 - h_n / (2 * (h_n + h_1))) * h_n / (6 * (h_n + h_1 + h_2)))
             * (h_n * (h_n + h_1) * (h_n + h_1 + h_2)) / (h_1 * (h_1 + h_2) * (h_1 + h_2 + h_3)))
    return (c1 + temp1 + temp2,
            c2 - (1 + h_1 / h_2) * temp1 - (1 + h_1 / h_2 + ratio) * temp2,
            temp1 * h_1 / h_2 + (h_1 / h_2 + ratio * (1 + h_2 / h_3)) * temp2,
            -temp2 * ratio * h_1 / h_2)


def sample_ipndm_v(model, x, sigmas, env: SamplerEnv, max_order: int = 4):
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        env.report(i, x, denoised)
        d = derivative(model, x, sigma, denoised)
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x_next = denoised
        else:
            steps = [sigmas[i + 1 - k] - sigmas[i - k] for k in range(order)]
            weights = variable_ab_weights(steps)
            slope = weights[0] * d
            for w, older in zip(weights[1:], reversed(history)):
                slope = slope + w * older
            x_next = x + (sigma_next - sigma) * slope
        history = (history + [d])[-(max_order - 1):]
        x = x_next
    return x


# ---------------------------------------------------------------------------------------------
# DEIS

def edm_to_vp_time(sigmas: torch.Tensor, eps_s: float = 1e-3, sigma_min: float = 0.002, sigma_max: float = 80.0):
    """(t of each σ, β_0, β_1) of the VP process σ(t) = √(e^{β_d t²/2 + β_min t} - 1) through
    (t = eps_s, σ_min) and (t = 1, σ_max) (float32, on the CPU)."""
    lo = torch.log(torch.tensor(sigma_min, dtype=torch.float32) ** 2 + 1)
    hi = torch.log(torch.tensor(sigma_max, dtype=torch.float32) ** 2 + 1)
    beta_d = 2 * (lo / eps_s - hi) / (eps_s - 1)
    beta_min = hi - 0.5 * beta_d
    s = sigmas.detach().cpu().float()
    t = ((beta_min ** 2 + 2 * beta_d * (s ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_coefficients(sigmas: torch.Tensor, max_order: int = 3, points: int = 10000) -> list[list[float]]:
    """DEIS "tab" weights per step (newest derivative first; empty for first-order steps and the last
    step to σ = 0, which the sampler takes with Euler)."""
    t, beta_0, beta_1 = edm_to_vp_time(sigmas)
    out: list[list[float]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1 or float(sigmas[i + 1]) <= 0:
            out.append([])
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), points)
        dtau = (t[i + 1] - t[i]) / points
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        dsigma_dt = 0.5 * (taus * (beta_1 - beta_0) + beta_0) / torch.sqrt(alpha * (1 - alpha))
        nodes = [t[i - k] for k in range(order)]
        weights = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
            weights.append(float(torch.sum(dsigma_dt * basis) * dtau))
        out.append(weights)
    return out


def sample_deis(model, x, sigmas, env: SamplerEnv, max_order: int = 3):
    coefficients = deis_coefficients(sigmas, max_order)
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        env.report(i, x, denoised)
        d = derivative(model, x, sigma, denoised)
        order = 1 if sigma_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (sigma_next - sigma) * d
        else:
            weights = coefficients[i]
            x_next = x + weights[0] * d
            for w, older in zip(weights[1:], reversed(history)):
                x_next = x_next + w * older
        history = (history + [d])[-(max_order - 1):]
        x = x_next
    return x


# ---------------------------------------------------------------------------------------------
# RES multistep

def _phi_1(h: torch.Tensor) -> torch.Tensor:
    return torch.expm1(h) / h


def _phi_2(h: torch.Tensor) -> torch.Tensor:
    return (_phi_1(h) - 1.0) / h


def sample_res_multistep(model, x, sigmas, env: SamplerEnv, eta: float = 0.0, s_noise: float = 1.0,
                         cfg_pp: bool = False):
    noise = default_noise_sampler(x, env.seed)
    old_sigma_down = old_denoised = None
    for i in range(len(sigmas) - 1):
        if cfg_pp:
            denoised, uncond = call_with_uncond(model, x, sigmas[i])
        else:
            denoised, uncond = model(x, sigmas[i]), None
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        env.report(i, x, denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
            else:
                x = x + derivative(model, x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), sigma_down.log().neg()
            t_old, t_prev = old_sigma_down.log().neg(), sigmas[i - 1].log().neg()
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi_1, phi_2 = _phi_1(-h), _phi_2(-h)
            b1 = torch.nan_to_num(phi_1 - phi_2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi_2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
                x = torch.exp(-h) * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = torch.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        if eta and sigmas[i + 1] > 0:  # (with η = 0 ComfyUI draws too and adds 0; the generator is the run's own)
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x
