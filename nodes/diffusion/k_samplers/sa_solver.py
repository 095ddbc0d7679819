"""SA-Solver (Xue et al., NeurIPS 2023, arXiv:2309.05019): a stochastic Adams predictor-corrector in
data prediction and half-log-SNR λ, in ComfyUI's form (its reconstructed, arbitrary-order version).

With stochasticity τ (τ(σ) = 1 for σ between the model's 20 % and 80 % timestep points, else 0) a step
from λ_s to λ_t is

    x_t = (σ_t/σ_s)·e^{-τ²h}·x_s + Σ_j b_j·D_j + σ_t·√(1 - e^{-2τ²h})·z,

    b_j = α_t·(1 + τ²)·∫_{λ_s}^{λ_t} e^{(1+τ²)(λ - λ_t)}·L_j(λ) dλ,

L_j the Lagrange basis on the λ of the estimates D_j used.  The integrals have closed forms: the
moments (1 + τ²)∫ e^{(1+τ²)(λ-λ_t)} λ^p dλ follow by parts from p = 0 up, and the b_j solve the
Vandermonde system Σ_j λ_j^p·b_j = α_t·moment_p.

Each step evaluates the model once at the predicted state; from the second step on the corrector
(order ≤ 4, using that new estimate) recomputes the state at σ_i from the previous one, adding the
*same* noise the predictor added, and the predictor (order ≤ 3) steps to σ_{i+1} drawing fresh noise
from the run's generator (only where τ > 0).  Near the end of a schedule that reaches 0 the orders
drop so no interpolation reaches past the schedule; the last step jumps to the estimate.
``sa_solver_pece`` also re-evaluates the model at every corrected state (2·steps - 1 calls).
"""
from __future__ import annotations

from typing import Callable

import torch

from nodes.diffusion.k_samplers.common import SamplerEnv, half_log_snr, offset_first_sigma
from nodes.diffusion.noise import default_noise_sampler


def exponential_moments(lam_s: torch.Tensor, lam_t: torch.Tensor, count: int, tau: float) -> torch.Tensor:
    """(1 + τ²)·∫_{λ_s}^{λ_t} e^{(1+τ²)(λ - λ_t)}·λ^p dλ for p = 0 … count - 1."""
    k = 1 + tau ** 2
    decay = (-k * (lam_t - lam_s)).exp()
    moments: list[torch.Tensor] = []
    for p in range(count):
        boundary = lam_t ** p - lam_s ** p * decay
        moments.append(boundary if p == 0 else boundary - (p / k) * moments[-1])
    return torch.stack(moments)


def _simple_order_2(sigma_next, lambdas, lam_s, lam_t, tau, corrector: bool) -> torch.Tensor:
    """SA-Solver's simplified order-2 weights (its appendix D), oldest estimate first."""
    k = 1 + tau ** 2
    h = lam_t - lam_s
    alpha_t = sigma_next * lam_t.exp()
    whole = alpha_t * (-h * k).expm1().neg()
    if corrector:
        b_new = alpha_t * (0.5 * k * h)
        return torch.stack([whole - b_new, b_new])
    b_old = alpha_t * (0.5 * k * h ** 2) / (lambdas[-2] - lam_s)
    return torch.stack([b_old, whole - b_old])


def stochastic_adams_weights(sigma_next: torch.Tensor, lambdas: torch.Tensor, lam_s: torch.Tensor,
                             lam_t: torch.Tensor, tau: float, simple_order_2: bool = False,
                             corrector: bool = False) -> torch.Tensor:
    """The weights b_j of the estimates at ``lambdas`` (oldest first) for a step λ_s → λ_t (module doc)."""
    n = lambdas.shape[0]
    if simple_order_2 and n == 2:
        return _simple_order_2(sigma_next, lambdas, lam_s, lam_t, tau, corrector)
    moments = exponential_moments(lam_s, lam_t, n, tau)
    vandermonde_t = torch.stack([lambdas ** p for p in range(n)])  # row p: λ_j^p
    return sigma_next * lam_t.exp() * torch.linalg.solve(vandermonde_t, moments)


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0) -> Callable[[torch.Tensor], float]:
    """τ(σ) = η inside [end_sigma, start_sigma], 0 outside (SA-Solver's recommended SDE interval)."""
    def tau(sigma) -> float:
        if eta <= 0:
            return 0.0
        s = float(sigma)
        return eta if start_sigma >= s >= end_sigma else 0.0

    return tau


def sample_sa_solver(model, x, sigmas, env: SamplerEnv, predictor_order: int = 3, corrector_order: int = 4,
                     use_pece: bool = False, simple_order_2: bool = False, s_noise: float = 1.0,
                     tau_func: Callable[[torch.Tensor], float] | None = None):
    if len(sigmas) <= 1:
        return x
    noise_sampler = default_noise_sampler(x, env.seed)
    sigmas = offset_first_sigma(sigmas, env)
    lambdas = half_log_snr(sigmas, env.flow)
    if tau_func is None:
        ms = env.model_sampling
        tau_func = tau_interval(ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8))
    history = max(predictor_order, corrector_order)
    ends_at_zero = float(sigmas[-1]) == 0
    steps = len(sigmas) - 1
    x_pred = x
    h: torch.Tensor | float = 0.0
    tau = 0.0
    noise: torch.Tensor | float = 0.0
    estimates: list[torch.Tensor] = []
    for i in range(steps):
        denoised = model(x_pred, sigmas[i])
        env.report(i, x_pred, denoised)
        estimates = (estimates + [denoised])[-history:]
        p_order = min(predictor_order, len(estimates))
        if i == 0 or (sigmas[i + 1] == 0 and not use_pece):
            c_order = 0
        else:
            c_order = min(corrector_order, len(estimates))
        if ends_at_zero:
            p_order = min(p_order, steps - 1 - i)
            c_order = min(c_order, steps - i)

        # corrector: the state at σ_i again, now interpolating through the new estimate
        if c_order == 0:
            x = x_pred
        else:
            b = stochastic_adams_weights(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau,
                                         simple_order_2, corrector=True)
            x = sigmas[i] / sigmas[i - 1] * (-(tau ** 2) * h).exp() * x + _combine(b, estimates[-c_order:])
            if tau > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i])
                estimates[-1] = denoised

        # predictor: on to σ_{i+1}
        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau = tau_func(sigmas[i + 1])
        b = stochastic_adams_weights(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau,
                                     simple_order_2)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau ** 2) * h).exp() * x + _combine(b, estimates[-p_order:])
        if tau > 0 and s_noise > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * tau ** 2 * h).expm1().neg().sqrt() \
                * s_noise
            x_pred = x_pred + noise
    return x_pred


def _combine(weights: torch.Tensor, estimates: list[torch.Tensor]) -> torch.Tensor:
    out = weights[0] * estimates[0]
    for w, e in zip(weights[1:], estimates[1:]):
        out = out + w * e
    return out


def sample_sa_solver_pece(model, x, sigmas, env: SamplerEnv):
    return sample_sa_solver(model, x, sigmas, env, use_pece=True)

