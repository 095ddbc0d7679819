"""What every sampler shares: its environment, the Karras ODE derivative, ancestral step sizes, the
half-log-SNR of a noise level, and the two ways a sampler calls the denoiser.

**Calling the denoiser.**  ``model(x, σ)`` returns the guided x0 estimate ("denoised").  The CFG++
samplers also need the *unconditional* estimate of the same call: :func:`call_with_uncond` asks the
model's ``with_uncond(x, σ)`` for ``(denoised, uncond_denoised)``.  Our sampling
:class:`~nodes.diffusion.sampling.Denoiser` evaluates the negative side for those calls even at cfg 1
(ComfyUI's ``disable_cfg1_optimization``, which its CFG++ samplers set) and, with no negative
conditioning at all (BasicGuider), answers zeros as ComfyUI's batch of an absent conditioning does.
A plain denoiser without guidance (a test stub) has no unconditional side distinct from its answer,
so its ``uncond_denoised`` is its ``denoised``.

**Half-log-SNR.**  λ = log(α/σ) is -log σ for the SD processes (x = x0 + σ·ε, α = 1) and
log((1 - σ)/σ) for flow models (x = (1 - σ)·x0 + σ·ε); samplers written in λ take the model kind
from :attr:`SamplerEnv.flow`.  λ(1) = -∞ for a flow model, so those samplers start a hair below
σ = 1 (:func:`offset_first_sigma`), as ComfyUI does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from nodes.diffusion.model_sampling import ModelSampling
from nodes.diffusion.noise import BrownianTreeNoiseSampler, NoiseSampler

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, x, denoised)


@dataclass
class SamplerEnv:
    """What a sampler needs besides the model and the state: the model's σ ↔ timestep facts, the run's
    seed (its step noise is seeded from it) and the per-step callback (progress, previews)."""

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


def derivative(model: Any, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """:func:`to_d` of the model's last answer, exact where the model can give it (see the package doc)."""
    exact = getattr(model, "derivative", None)
    return exact(x, sigma, denoised) if exact is not None else to_d(x, sigma, denoised)


def call_with_uncond(model: Any, x: torch.Tensor, sigma: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(denoised, uncond_denoised) of one model call, for the CFG++ samplers (see the module doc)."""
    both = getattr(model, "with_uncond", None)
    if both is None:
        denoised = model(x, sigma)
        return denoised, denoised
    return both(x, sigma)


def ancestral_step(sigma_from: Any, sigma_to: Any, eta: float = 1.0):
    """(σ_down, σ_up): step deterministically to σ_down, then add σ_up of fresh noise to reach σ_to.

    Python's ``min`` on purpose: where the variance ratio is undefined (σ_from = ∞, a flow model's
    σ/α at σ = 1) the NaN comparison keeps σ_to, i.e. the step re-noises fully, as in ComfyUI.
    """
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def rf_ancestral(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float):
    """Rectified-flow ancestral step: (σ_down, α_next/α_down, renoise coefficient)."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next ** 2 - sigma_down ** 2 * alpha_next ** 2 / alpha_down ** 2) ** 0.5
    return sigma_down, alpha_next / alpha_down, renoise


def half_log_snr(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """λ = log(α/σ): -log σ for SD, log((1 - σ)/σ) for flow models."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_of(lam: torch.Tensor, flow: bool) -> torch.Tensor:
    """The inverse of :func:`half_log_snr`."""
    return lam.neg().sigmoid() if flow else lam.neg().exp()


def offset_first_sigma(sigmas: torch.Tensor, env: SamplerEnv) -> torch.Tensor:
    """Flow models: σ = 1 has λ = -∞; start a hair below it, at the 0.01 % point of the schedule."""
    if env.flow and len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = env.model_sampling.percent_to_sigma(1e-4)
    return sigmas


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, env: SamplerEnv, cpu: bool) -> NoiseSampler:
    """The SDE samplers' Brownian-tree noise over the run's σ range, seeded with the run's seed."""
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=env.seed, cpu=cpu)


def h_phi_1(h: torch.Tensor) -> torch.Tensor:
    """h·φ₁(h) = e^h - 1, the first exponential-integrator weight."""
    return torch.expm1(h)


def h_phi_2(h: torch.Tensor) -> torch.Tensor:
    """h·φ₂(h) = (e^h - 1 - h)/h, the second exponential-integrator weight."""
    return (torch.expm1(h) - h) / h


def log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The geometric mean √(a·b), taken through logs as DPM-2 does."""
    return a.log().lerp(b.log(), 0.5).exp()

