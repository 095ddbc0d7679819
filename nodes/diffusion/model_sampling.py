"""How a model's noise levels relate to its inputs and outputs (ComfyUI's ``model_sampling``).

Every sampler works in the k-diffusion convention: the state ``x`` at noise level σ is
``x0 + σ·ε`` for discrete-time (SD1.5/SDXL) models and ``(1 - σ)·x0 + σ·ε`` for flow models
(FLUX).  A :class:`ModelSampling` knows, for one model:

* its table of noise levels (``sigmas``, ascending) — the schedulers pick from it;
* how σ maps to the timestep the denoiser is called with (``timestep``/``denoiser_timestep``) and back
  (``sigma``), and how a timestep-range percentage maps to σ (``percent_to_sigma``);
* how to scale the state into the denoiser's input (``calculate_input``) and turn its output into the
  denoised estimate (``calculate_denoised``);
* how the first noise is mixed with the input latent (``noise_scaling``) and undone at the end for
  a latent handed on with leftover noise (``inverse_noise_scaling``).

Facts from ComfyUI's ``comfy/model_sampling.py`` (formulas; the code is ours):

* discrete models: σ_t = √((1 - ᾱ_t)/ᾱ_t) over the 1000 training timesteps; σ between two timesteps
  is interpolated linearly in log σ; the timestep of a σ is the *nearest* training timestep in log σ
  (the denoiser never sees fractional timesteps); the full-denoise first noise is scaled by
  √(1 + σ²), otherwise by σ;
* FLUX.1-dev (``ModelSamplingFlux``): σ(t) = e^μ / (e^μ + 1/t - 1) over t = i/10000, μ = 1.15 unless a
  ``ModelSamplingFlux`` node sets it from the image size; FLUX.1-schnell (``ModelSamplingDiscreteFlow``,
  shift 1, multiplier 1): σ(t) = t over t = i/1000.

The discrete table is computed in float32 the way diffusers' schedulers compute it (ComfyUI computes
it in float64 and rounds; the two differ by a few float32 ulps), so where ComfyUI's choices and a
diffusers pipeline's coincide the two give bit-identical pictures.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from nodes.diffusion.types import DiffusionModel, ModelFamily

FLUX_DEV_DEFAULT_MU = 1.15  # ComfyUI's ModelSamplingFlux default shift for FLUX.1-dev


def _reshape(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-row σ (B,) or a single σ () broadcast against a (B, C, H, W) tensor."""
    sigma = torch.as_tensor(sigma)
    if sigma.numel() == 1:
        return sigma.reshape(())
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


class ModelSampling:
    """Base: the σ ↔ timestep table and the input/output scalings of one model kind."""

    kind: str = "eps"
    sigmas: torch.Tensor  # ascending noise levels of the model's timesteps, float32

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def denoiser_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The ``t`` handed to our denoiser adapters (UNet: the training timestep; FLUX: 1000·σ)."""
        return self.timestep(sigma)

    def percent_to_sigma(self, percent: float) -> float:
        raise NotImplementedError

    def sigma_to_percent(self, sigma: float) -> float:
        """The inverse of :meth:`percent_to_sigma`: where σ lies in a timestep-range window (0 = start)."""
        raise NotImplementedError

    # --- scalings -----------------------------------------------------------------------------

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def inverse_noise_scaling(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x


class DiscreteSampling(ModelSampling):
    """SD1.5/SDXL: ε- or v-prediction over a discrete table of training timesteps."""

    def __init__(self, sigmas: torch.Tensor, prediction: str = "eps") -> None:
        if prediction not in ("eps", "v_prediction"):
            raise ValueError(f"unknown prediction type {prediction!r}")
        self.kind = prediction
        self.sigmas = sigmas.float()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = (sigma.log().reshape(-1)[None, :] - self.log_sigmas[:, None]).abs()
        return dists.argmin(dim=0).reshape(sigma.shape).to(torch.float32)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32).clamp(0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        interpolated = ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
        # a whole timestep is the table entry itself (exp(log σ) would round it)
        return torch.where(w == 0, self.sigmas[low], interpolated)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))

    def sigma_to_percent(self, sigma: float) -> float:
        if sigma <= 0.0:
            return 1.0
        if sigma >= float(self.sigmas[-1]):
            return 0.0
        log_s = math.log(sigma)
        ls = self.log_sigmas.double().numpy()
        t = float(np.interp(log_s, ls, np.arange(len(ls), dtype=np.float64)))
        return min(max(1.0 - t / 999.0, 0.0), 1.0)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = _reshape(sigma, x.ndim)
        return x / (sigma ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        sigma = _reshape(sigma, model_output.ndim)
        if self.kind == "eps":
            return model_input - model_output * sigma
        return model_input * 1.0 / (sigma ** 2 + 1.0) - model_output * sigma * 1.0 / (sigma ** 2 + 1.0) ** 0.5

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        sigma = _reshape(sigma, noise.ndim)
        scaled = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return scaled + latent


def flux_time_shift(mu: float, t: Any) -> Any:
    """FLUX's resolution shift of flow time t: e^μ / (e^μ + 1/t - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def snr_time_shift(shift: float, t: Any) -> Any:
    """SD3-style shift of flow time t (ModelSamplingDiscreteFlow): s·t / (1 + (s - 1)·t)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


class FlowSampling(ModelSampling):
    """Rectified flow (FLUX): x = (1 - σ)·x0 + σ·ε, the denoiser predicts the velocity ε - x0.

    ``mu`` set: ComfyUI's ModelSamplingFlux (σ = flux_time_shift(μ, t), t = i/10000).  ``mu`` None:
    ModelSamplingDiscreteFlow (σ = snr_time_shift(shift, t), t = i/1000), FLUX.1-schnell's.
    """

    kind = "flow"

    def __init__(self, *, mu: float | None = None, shift: float = 1.0, multiplier: float = 1.0) -> None:
        self.mu = mu
        self.shift = shift
        self.multiplier = multiplier
        n = 10000 if mu is not None else 1000
        t = (np.arange(1, n + 1, dtype=np.float32) / np.float32(n))
        # float32 with true division, as diffusers' FlowMatchEulerDiscreteScheduler computes its shift
        self.sigmas = torch.from_numpy(np.asarray(self._shift(t), dtype=np.float32))

    def _shift(self, t: Any) -> Any:
        return flux_time_shift(self.mu, t) if self.mu is not None else snr_time_shift(self.shift, t)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma) * (1.0 if self.mu is not None else self.multiplier)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32)
        if self.mu is None:
            t = t / self.multiplier
        return torch.from_numpy(np.asarray(self._shift(t.numpy().astype(np.float32)), dtype=np.float32))

    def denoiser_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        # the FLUX adapter divides by 1000, as diffusers' FluxPipeline hands t = 1000·σ to the transformer
        return torch.as_tensor(sigma, dtype=torch.float32) * 1000

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self._shift(1.0 - percent))

    def sigma_to_percent(self, sigma: float) -> float:
        if sigma >= 1.0:
            return 0.0
        if sigma <= 0.0:
            return 1.0
        if self.mu is not None:
            t = 1.0 / (1.0 + math.exp(self.mu) * (1.0 / sigma - 1.0))
        else:
            t = sigma / (self.shift - (self.shift - 1.0) * sigma)
        return min(max(1.0 - t, 0.0), 1.0)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        return model_input - model_output * _reshape(sigma, model_output.ndim)

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        sigma = _reshape(sigma, noise.ndim)
        return sigma * noise + (1.0 - sigma) * latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x / (1.0 - _reshape(sigma, x.ndim))


# ---------------------------------------------------------------------------------------------
# building one for a model

def discrete_sigmas(config: Mapping[str, Any]) -> torch.Tensor:
    """σ of each training timestep from a diffusers scheduler config (betas as diffusers builds them)."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    schedule = config.get("beta_schedule", "scaled_linear")
    trained = config.get("trained_betas")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float32)
    elif schedule == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                             dtype=torch.float32)
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r} in the model's scheduler config")
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's zero-terminal-SNR rescale of a σ table (the last ᾱ is kept just above 0: σ_max finite)."""
    alphas_cumprod = 1 / (sigmas * sigmas + 1)
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alphas_bar = root ** 2
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


def model_sampling_for(model: DiffusionModel) -> ModelSampling:
    """The ModelSampling of a MODEL, with its node patches (ModelSamplingFlux, ModelSamplingDiscrete)."""
    prediction = model.prediction_type
    if prediction in ("flow", "flow_prediction") or model.family.is_flux:
        if "mu" in model.sampling:
            return FlowSampling(mu=float(model.sampling["mu"]))
        if model.family == ModelFamily.FLUX_DEV:
            return FlowSampling(mu=FLUX_DEV_DEFAULT_MU)
        return FlowSampling(mu=None, shift=float(model.sampling.get("shift", 1.0)), multiplier=1.0)
    sigmas = discrete_sigmas(model.scheduler_config)
    if model.sampling.get("zsnr") or model.scheduler_config.get("rescale_betas_zero_snr"):
        sigmas = rescale_zero_terminal_snr(sigmas.double()).float()
    kind = "v_prediction" if prediction in ("v_prediction", "v") else "eps"
    return DiscreteSampling(sigmas, kind)
