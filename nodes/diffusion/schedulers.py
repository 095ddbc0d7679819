"""ComfyUI's sampler and scheduler names, and the sigma schedule of each scheduler name.

ComfyUI names a sampling run with two words: a *sampler* (the solver: ``euler``, ``dpmpp_2m`` …)
and a *scheduler* (how the noise levels are spaced: ``normal``, ``karras`` …).  Any sampler runs
with any scheduler on any model kind, as in ComfyUI; the samplers live in
:mod:`nodes.diffusion.k_samplers` (all of ComfyUI's 42 names).  A name ComfyUI does not have is refused
with the list of those that run (:func:`check_sampler`), never silently replaced.

The schedules (:func:`calculate_sigmas`) follow ComfyUI's ``comfy/samplers.py`` formulas; each
returns ``steps + 1`` descending sigmas ending with 0 (``normal`` on a zero-terminal-SNR model and
``ddim_uniform`` when the model's first σ is 0 end on that table value instead):

=================  ===========================================================================
normal             σ(t) at ``linspace(t(σ_max), t(σ_min), steps)``, then 0
sgm_uniform        σ(t) at ``linspace(t(σ_max), t(σ_min), steps + 1)[:-1]``, then 0
simple             every (len(table)/steps)-th entry of the model's σ table from the top, then 0
ddim_uniform       table entries 1, 1 + k, 1 + 2k … (k = len(table) // steps), reversed, then 0
karras             Karras et al. (2022), ρ = 7, between the model's σ_min and σ_max
exponential        log-linear between σ_max and σ_min
beta               table entries at round(999·Beta⁻¹(1 - i/steps; 0.6, 0.6)), duplicates dropped
linear_quadratic   Mochi's schedule (linear to 0.025 over half the steps, then quadratic) × σ_max
kl_optimal         tan((1 - i/(n-1))·atan σ_max + i/(n-1)·atan σ_min)
=================  ===========================================================================

:func:`ksampler_sigmas` adds what the KSampler node does on top: ``dpm_2``, ``dpm_2_ancestral``,
``uni_pc`` and ``uni_pc_bh2`` compute one step more and drop the next-to-last σ, and ``denoise`` < 1
computes the schedule for ``int(steps / denoise)`` steps and keeps its last ``steps + 1`` sigmas —
so the user's ``steps`` is the number of steps that run.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported when a schedule is computed: node registration stays light
    import torch

    from nodes.diffusion.model_sampling import ModelSampling

# ComfyUI's full lists (comfy/samplers.py), in ComfyUI's order, so every workflow's widget values load.
SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
SCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)

# Every ComfyUI sampler name is implemented (nodes.diffusion.k_samplers; kept here as names so
# validation stays light); check_sampler still refuses a name ComfyUI does not have.
IMPLEMENTED_SAMPLERS: frozenset[str] = frozenset(SAMPLER_NAMES)
# KSampler computes one more step for these and drops the next-to-last sigma (ComfyUI's rule)
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})
MODEL_KINDS: tuple[str, ...] = ("eps", "v_prediction", "flow")


def supported_samplers() -> list[str]:
    return [n for n in SAMPLER_NAMES if n in IMPLEMENTED_SAMPLERS]


def check_sampler(sampler: str) -> str | None:
    """None if ``sampler`` runs here, else the user-facing reason (naming the samplers that do)."""
    if sampler in IMPLEMENTED_SAMPLERS:
        return None
    known = "is not implemented by this runtime" if sampler in SAMPLER_NAMES else "is unknown"
    return f"sampler_name '{sampler}' {known}; supported samplers: {', '.join(supported_samplers())}"


def check_scheduler(scheduler: str) -> str | None:
    if scheduler in SCHEDULER_NAMES:
        return None
    return f"scheduler '{scheduler}' is unknown; supported schedulers: {', '.join(SCHEDULER_NAMES)}"


def check_combination(sampler: str, scheduler: str) -> str | None:
    """None if the pair runs (every implemented sampler runs with every scheduler), else the message."""
    return check_sampler(sampler) or check_scheduler(scheduler)


def model_kind(prediction_type: str) -> str:
    """DiffusionModel.prediction_type → model kind."""
    if prediction_type in ("flow", "flow_prediction"):
        return "flow"
    if prediction_type in ("v_prediction", "v"):
        return "v_prediction"
    return "eps"


# ---------------------------------------------------------------------------------------------
# the schedules

def _append_zero(sigmas: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> "torch.Tensor":
    """Karras et al. (2022): σ_i = (σ_max^(1/ρ) + i/(n-1)·(σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ, then 0."""
    import torch

    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> "torch.Tensor":
    import torch

    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def normal_sigmas(ms: "ModelSampling", steps: int, sgm: bool = False) -> "torch.Tensor":
    import torch

    start = float(ms.timestep(ms.sigma_max))
    end = float(ms.timestep(ms.sigma_min))
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(torch.tensor(end))), 0, abs_tol=1e-5):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(t)) for t in timesteps]
    if append_zero:
        sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def simple_sigmas(ms: "ModelSampling", steps: int) -> "torch.Tensor":
    import torch

    table = ms.sigmas
    stride = len(table) / steps
    sigs = [float(table[-(1 + int(i * stride))]) for i in range(steps)] + [0.0]
    return torch.tensor(sigs, dtype=torch.float32)


def ddim_uniform_sigmas(ms: "ModelSampling", steps: int) -> "torch.Tensor":
    import torch

    table = ms.sigmas
    x = 1
    if math.isclose(float(table[x]), 0, abs_tol=1e-5):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    stride = max(len(table) // steps, 1)
    while x < len(table):
        sigs.append(float(table[x]))
        x += stride
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def beta_sigmas(ms: "ModelSampling", steps: int, alpha: float = 0.6, beta: float = 0.6) -> "torch.Tensor":
    """Lee et al. (2024), arXiv:2407.12173: timesteps at quantiles of a Beta(α, β) distribution."""
    import numpy as np
    import scipy.stats
    import torch

    table = ms.sigmas
    total = len(table) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta) * total)
    sigs: list[float] = []
    last = -1.0
    for t in ts:
        if t != last:
            sigs.append(float(table[int(t)]))
        last = t
    sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def linear_quadratic_sigmas(ms: "ModelSampling", steps: int, threshold_noise: float = 0.025,
                            linear_steps: int | None = None) -> "torch.Tensor":
    """Genmo Mochi's schedule: noise falls linearly to ``threshold_noise`` over half the steps, then
    quadratically; scaled by the model's σ_max."""
    import torch

    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic = [quadratic_coef * i ** 2 + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in linear + quadratic + [1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * ms.sigma_max.cpu()


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> "torch.Tensor":
    """The KL-optimal schedule (AUTOMATIC1111 PR 15608): σ_i = tan((1 - w)·atan σ_max + w·atan σ_min)."""
    import torch

    w = torch.arange(n, dtype=torch.float32).div_(n - 1)
    sigmas = w.new_zeros(n + 1)
    sigmas[:-1] = (w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)).tan_()
    return sigmas


def calculate_sigmas(ms: "ModelSampling", scheduler: str, steps: int) -> "torch.Tensor":
    """The ``steps``-step schedule of a scheduler name for a model (float32, CPU, ends with 0)."""
    if scheduler == "simple":
        return simple_sigmas(ms, steps)
    if scheduler == "sgm_uniform":
        return normal_sigmas(ms, steps, sgm=True)
    if scheduler == "normal":
        return normal_sigmas(ms, steps)
    if scheduler == "ddim_uniform":
        return ddim_uniform_sigmas(ms, steps)
    if scheduler == "beta":
        return beta_sigmas(ms, steps)
    if scheduler == "linear_quadratic":
        return linear_quadratic_sigmas(ms, steps)
    lo, hi = float(ms.sigma_min), float(ms.sigma_max)
    if scheduler == "karras":
        return karras_sigmas(steps, lo, hi)
    if scheduler == "exponential":
        return exponential_sigmas(steps, lo, hi)
    if scheduler == "kl_optimal":
        return kl_optimal_sigmas(steps, lo, hi)
    raise ValueError(check_scheduler(scheduler) or f"scheduler '{scheduler}' has no schedule")


def ksampler_sigmas(ms: "ModelSampling", sampler: str, scheduler: str, steps: int,
                    denoise: float = 1.0) -> "torch.Tensor":
    """The sigmas a KSampler node runs: ``steps`` steps of the named schedule, truncated for ``denoise``.

    ``denoise`` < 1: the schedule of ``int(steps / denoise)`` steps, of which the last ``steps`` run
    (ComfyUI's rule; diffusers' img2img instead runs ``int(steps·denoise)`` of ``steps``).
    ``denoise`` ≤ 0: no step (the input latent is returned).
    """
    import torch

    def full(n: int) -> torch.Tensor:
        if sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
            sig = calculate_sigmas(ms, scheduler, n + 1)
            return torch.cat([sig[:-2], sig[-1:]])
        return calculate_sigmas(ms, scheduler, n)

    if denoise is None or denoise > 0.9999:
        return full(steps)
    if denoise <= 0.0:
        return torch.zeros(0)
    return full(int(steps / denoise))[-(steps + 1):]


def step_window(sigmas: "torch.Tensor", start_step: int | None, last_step: int | None,
                force_full_denoise: bool) -> "torch.Tensor | None":
    """KSamplerAdvanced's window on a schedule; None when nothing is left to run.

    ``last_step`` cuts the schedule after that step (with ``force_full_denoise`` the last kept σ
    becomes 0, so the output is fully denoised); ``start_step`` drops the steps before it.
    """
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return None
    return sigmas
