"""The sampler algorithms, in the k-diffusion convention ComfyUI uses: every one of ComfyUI's 42
sampler names.

Each sampler takes ``model(x, σ) → denoised`` (the guided x0 estimate), the starting state ``x``
(already noised to ``sigmas[0]``), the descending schedule ``sigmas`` and a
:class:`~nodes.diffusion.k_samplers.common.SamplerEnv` (seed, the model's
:class:`~nodes.diffusion.model_sampling.ModelSampling`, the per-step callback), and returns the state
at ``sigmas[-1]``.  The update rules are the published ones in the form, with the noise and the model
calls, that ComfyUI's ``comfy/k_diffusion/sampling.py``, ``deis.py``, ``sa_solver.py`` and
``comfy/extra_samplers/uni_pc.py`` give them (read for the facts; this is our own code).  One module
per family:

=====================  ========================================================================
:mod:`.euler`          euler, euler_ancestral, heun, heunpp2, dpm_2, dpm_2_ancestral, lms,
                       gradient_estimation(_cfg_pp)
:mod:`.dpmpp`          dpmpp_2s_ancestral, dpmpp_sde(_gpu), dpmpp_2m, dpmpp_2m_sde(_heun)(_gpu),
                       dpmpp_3m_sde(_gpu)
:mod:`.cfg_pp`         euler_cfg_pp, euler_ancestral_cfg_pp, dpmpp_2s_ancestral_cfg_pp, dpmpp_2m_cfg_pp
:mod:`.dpm_solver`     dpm_fast, dpm_adaptive (DPM-Solver with fixed / controlled steps)
:mod:`.multistep`      ipndm, ipndm_v, deis, res_multistep(_ancestral)(_cfg_pp)
:mod:`.exponential_sde`  er_sde, seeds_2, seeds_3
:mod:`.sa_solver`      sa_solver, sa_solver_pece
:mod:`.ddpm_lcm`       ddpm, lcm
:mod:`.unipc`          uni_pc, uni_pc_bh2
=====================  ========================================================================

``ddim`` is Euler (its difference, random inpainting noise, lives in the sampling loop).

Where the randomness comes from (:mod:`nodes.diffusion.noise`): ancestral and "SDE-like" samplers
that ComfyUI gives its default noise sampler (the ``*_ancestral`` family, ``ddpm``, ``lcm``,
``er_sde``, ``seeds_*``, ``sa_solver*``, ``res_multistep_ancestral*``, ``euler_ancestral_cfg_pp``)
draw from a fresh generator seeded from the run's seed; the ``dpmpp_*_sde`` samplers from a Brownian
tree of the seed.  The CFG++ samplers also read the unconditional estimate of each call
(:func:`~nodes.diffusion.k_samplers.common.call_with_uncond`).

Where a derivative (x - denoised)/σ is needed the model may supply it exactly (``model.derivative``):
for flow models that is the velocity the network predicted, the quantity diffusers' flow schedulers
step with, so the round trip through the denoised estimate adds no rounding.
"""
from __future__ import annotations

from typing import Callable

import torch

from nodes.diffusion.k_samplers import cfg_pp, ddpm_lcm, dpm_solver, dpmpp, euler, exponential_sde, multistep
from nodes.diffusion.k_samplers import sa_solver as sa
from nodes.diffusion.k_samplers import unipc
from nodes.diffusion.k_samplers.common import SamplerEnv

__all__ = ["SAMPLER_FUNCTIONS", "RANDOM_INPAINT_NOISE", "SamplerEnv"]


def _with(fn, **options):
    def run(model, x, sigmas, env):
        return fn(model, x, sigmas, env, **options)
    run.__name__ = fn.__name__
    return run


SAMPLER_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": euler.sample_euler,
    "euler_cfg_pp": cfg_pp.sample_euler_cfg_pp,
    "euler_ancestral": euler.sample_euler_ancestral,
    "euler_ancestral_cfg_pp": cfg_pp.sample_euler_ancestral_cfg_pp,
    "heun": euler.sample_heun,
    "heunpp2": euler.sample_heunpp2,
    "dpm_2": euler.sample_dpm_2,
    "dpm_2_ancestral": euler.sample_dpm_2_ancestral,
    "lms": euler.sample_lms,
    "dpm_fast": dpm_solver.sample_dpm_fast,
    "dpm_adaptive": dpm_solver.sample_dpm_adaptive,
    "dpmpp_2s_ancestral": dpmpp.sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": cfg_pp.sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": dpmpp.sample_dpmpp_sde,
    "dpmpp_sde_gpu": _with(dpmpp.sample_dpmpp_sde, cpu_tree=False),
    "dpmpp_2m": dpmpp.sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": cfg_pp.sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": dpmpp.sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": _with(dpmpp.sample_dpmpp_2m_sde, cpu_tree=False),
    "dpmpp_2m_sde_heun": _with(dpmpp.sample_dpmpp_2m_sde, solver_type="heun"),
    "dpmpp_2m_sde_heun_gpu": _with(dpmpp.sample_dpmpp_2m_sde, solver_type="heun", cpu_tree=False),
    "dpmpp_3m_sde": dpmpp.sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": _with(dpmpp.sample_dpmpp_3m_sde, cpu_tree=False),
    "ddpm": ddpm_lcm.sample_ddpm,
    "lcm": ddpm_lcm.sample_lcm,
    "ipndm": multistep.sample_ipndm,
    "ipndm_v": multistep.sample_ipndm_v,
    "deis": multistep.sample_deis,
    "res_multistep": multistep.sample_res_multistep,
    "res_multistep_cfg_pp": _with(multistep.sample_res_multistep, cfg_pp=True),
    "res_multistep_ancestral": _with(multistep.sample_res_multistep, eta=1.0),
    "res_multistep_ancestral_cfg_pp": _with(multistep.sample_res_multistep, eta=1.0, cfg_pp=True),
    "gradient_estimation": euler.sample_gradient_estimation,
    "gradient_estimation_cfg_pp": _with(euler.sample_gradient_estimation, cfg_pp=True),
    "er_sde": exponential_sde.sample_er_sde,
    "seeds_2": exponential_sde.sample_seeds_2,
    "seeds_3": exponential_sde.sample_seeds_3,
    "sa_solver": sa.sample_sa_solver,
    "sa_solver_pece": sa.sample_sa_solver_pece,
    "ddim": euler.sample_euler,
    "uni_pc": _with(unipc.sample_unipc, variant="bh1"),
    "uni_pc_bh2": _with(unipc.sample_unipc, variant="bh2"),
}
# samplers whose inpainting blend uses separate noise (seed + 1), not the initial noise (ComfyUI's ddim)
RANDOM_INPAINT_NOISE = frozenset({"ddim"})
