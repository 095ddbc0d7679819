"""DPM-Solver (Lu et al., 2022, arXiv:2206.00927) in noise prediction, as ComfyUI runs ``dpm_fast`` and
``dpm_adaptive``: time t = -log σ, ε = (x - denoised)/σ, and the single-step solvers

* DPM-Solver-1: x' = x - σ'·(e^h - 1)·ε;
* DPM-Solver-2 (intermediate point at r₁·h): x' = x - σ'(e^h - 1)ε - σ'/(2r₁)·(e^h - 1)·(ε₁ - ε);
* DPM-Solver-3 (points at h/3, 2h/3): the third-order form with (e^h - 1)/h - 1 weights.

Neither sampler follows the schedule's steps: from the schedule they take only its ends, σ_max =
``sigmas[0]`` and σ_min = the last σ above 0, and they stop *at* σ_min (no final jump to σ = 0), so
the output keeps σ_min of noise, as in ComfyUI.

* ``dpm_fast``: as many model calls as the schedule has steps, spent as ⌊n/3⌋ + 1 equal steps in t of
  order 3 (the last ones of order 2 and 1, or n mod 3).
* ``dpm_adaptive``: DPM-Solver-23 with a step size controller.  Each attempt from t_s with step h makes
  three calls (ε at t_s, t_s + h/3, t_s + 2h/3) and compares the second- and third-order results;
  error = ‖(x_low - x_high)/δ‖/√N with δ = max(atol, rtol·max(|x_low|, |x_prev|)), atol = 0.0078,
  rtol = 0.05.  The PID controller (integral only: h ← h·(1 + atan(ε⁻¹ᐟ³ - 1)), starting at h = 0.05)
  accepts a step when that factor is at least 0.81; a rejected step is retried with the smaller h.

Both draw ancestral noise only with η > 0, which ComfyUI's sampler names never set (η = 0); the
parameter is kept so the algorithm is whole.  Progress: ``dpm_fast`` reports once per solver step
with the model calls made so far, ``dpm_adaptive`` once per attempt with the share of [t_start, t_end]
covered — both end at the schedule's step count.
"""
from __future__ import annotations

import math

import torch

from nodes.diffusion.k_samplers.common import SamplerEnv, ancestral_step
from nodes.diffusion.noise import default_noise_sampler


class PIDStepSizeController:
    """A PID controller of the ODE step size (Söderlind): h ← h·limiter(∏ (1/error_k)^b_k)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float = 1,
                 accept_safety: float = 0.81, eps: float = 1e-8) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.inverse_errors: list[float] = []

    @staticmethod
    def limiter(factor: float) -> float:
        return 1 + math.atan(factor - 1)

    def propose_step(self, error: float) -> bool:
        """Scale ``h`` for the measured error; True when the step that produced it is accepted."""
        inv = 1 / (float(error) + self.eps)
        if not self.inverse_errors:
            self.inverse_errors = [inv, inv, inv]
        self.inverse_errors[0] = inv
        e = self.inverse_errors
        factor = self.limiter(e[0] ** self.b1 * e[1] ** self.b2 * e[2] ** self.b3)
        accept = factor >= self.accept_safety
        if accept:
            e[2], e[1] = e[1], e[0]
        self.h *= factor
        return accept


class _DPMSolver:
    """The single-step DPM-Solvers on one run's model, with a per-step cache of ε evaluations."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls = 0

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log().neg()

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = self.sigma(t)
            cache[key] = (x - self.model(x, sigma)) / sigma
            self.calls += 1
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x, t, t_next, cache, r1: float = 1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1: float = 1 / 3, r2: float = 2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def ancestral_target(self, t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor, eta: float,
                         forward: bool = True):
        """(t to step to, σ of noise to add) for one step; (t_next, 0) without noise."""
        if not eta:
            return t_next, 0.0
        sigma_down, _ = ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_down = torch.minimum(t_end, self.t(sigma_down)) if forward else torch.maximum(t_end, self.t(sigma_down))
        return t_down, (self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5


def _schedule_ends(sigmas: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ_min, σ_max) of a schedule as ComfyUI hands them to ``dpm_fast``/``dpm_adaptive``."""
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    sigma_max = sigmas[0]
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError(f"{name} needs a schedule whose first and last non-zero sigmas are above 0 "
                         f"(got {[round(float(s), 4) for s in sigmas]})")
    return sigma_min, sigma_max


def _fast_orders(nfe: int) -> list[int]:
    m = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


def sample_dpm_fast(model, x, sigmas, env: SamplerEnv, eta: float = 0.0, s_noise: float = 1.0):
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _schedule_ends(sigmas, "dpm_fast")
    nfe = len(sigmas) - 1
    solver = _DPMSolver(model)
    t_start, t_end = solver.t(sigma_max), solver.t(sigma_min)
    if eta and not t_end > t_start:
        raise ValueError("dpm_fast: eta must be 0 for reverse sampling")
    noise = default_noise_sampler(x, env.seed)
    orders = _fast_orders(nfe)
    ts = torch.linspace(float(t_start), float(t_end), len(orders) + 1, device=sigmas.device)
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_target, sigma_up = solver.ancestral_target(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        env.report(sum(orders[:i + 1]) - 1, x, x - solver.sigma(t) * eps)
        if order == 1:
            x = solver.step_1(x, t, t_target, cache)
        elif order == 2:
            x = solver.step_2(x, t, t_target, cache)
        else:
            x = solver.step_3(x, t, t_target, cache)
        if eta:  # (ComfyUI draws with η = 0 too, and adds 0: the run's own generator, so skipping is the same)
            x = x + sigma_up * s_noise * noise(solver.sigma(t), solver.sigma(t_next))
    return x


def sample_dpm_adaptive(model, x, sigmas, env: SamplerEnv, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                        h_init: float = 0.05, pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                        accept_safety: float = 0.81, eta: float = 0.0, s_noise: float = 1.0):
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError("dpm_adaptive: order must be 2 or 3")
    sigma_min, sigma_max = _schedule_ends(sigmas, "dpm_adaptive")
    solver = _DPMSolver(model)
    t_start, t_end = solver.t(sigma_max), solver.t(sigma_min)
    forward = bool(t_end > t_start)
    if eta and not forward:
        raise ValueError("dpm_adaptive: eta must be 0 for reverse sampling")
    noise = default_noise_sampler(x, env.seed)
    total = len(sigmas) - 1
    span = float(t_end - t_start)
    atol_t, rtol_t = torch.tensor(atol, device=x.device), torch.tensor(rtol, device=x.device)
    pid = PIDStepSizeController(abs(h_init) * (1 if forward else -1), pcoeff, icoeff, dcoeff,
                                1.5 if eta else order, accept_safety)
    s = t_start
    x_prev = x
    while (s < t_end - 1e-5) if forward else (s > t_end + 1e-5):
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        t_target, sigma_up = solver.ancestral_target(s, t, t_end, eta, forward)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_target, cache)
            x_high = solver.step_2(x, s, t_target, cache)
        else:
            x_low = solver.step_2(x, s, t_target, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_target, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if not torch.isfinite(error):  # (ComfyUI would shrink h to NaN and never finish)
            raise ValueError("dpm_adaptive: the model's estimate is not finite (NaN or inf), so no step size fits")
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high
            if eta:
                x = x + sigma_up * s_noise * noise(solver.sigma(s), solver.sigma(t))
            s = t
        covered = float(s - t_start) / span if span else 1.0
        env.report(max(math.ceil(round(covered * total, 6)), 1) - 1, x, denoised)
    return x
