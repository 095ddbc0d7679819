"""Every scheduler name's sigmas equal ComfyUI's published formulas, for SD, FLUX.1-dev and FLUX.1-schnell.

The expected values are computed here, independently of our code, from the formulas in ComfyUI's
``comfy/samplers.py`` / ``comfy/k_diffusion/sampling.py`` / ``comfy/model_sampling.py`` (NumPy, float64):
the model's σ table, then each scheduler, then KSampler's rules (``denoise`` < 1 keeps the last
``steps + 1`` sigmas of an ``int(steps / denoise)``-step schedule; dpm_2/dpm_2_ancestral/uni_pc/uni_pc_bh2
compute one step more and drop the next-to-last σ).  Tolerances: our SD table is the float32 table
diffusers' schedulers build (ComfyUI: float64, rounded), 1.3e-5 apart at most; FLUX tables agree to
float32 rounding.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.diffusion.model_sampling import model_sampling_for
from nodes.diffusion.schedulers import SCHEDULER_NAMES, calculate_sigmas, ksampler_sigmas
from nodes.sampling import BasicScheduler, KSampler, ModelSamplingDiscrete, ModelSamplingFlux, SplitSigmas, \
    SplitSigmasDenoise
from tests import sampling_fixtures as fx

SD_RTOL = 3e-5
FLOW_RTOL = 2e-6


# --- the references: ComfyUI's formulas, float64 --------------------------------------------------

class RefSD:
    """ModelSamplingDiscrete: betas = linspace(√β₀, √β₁, 1000)², σ = √((1 - ᾱ)/ᾱ), σ(t) log-linear."""

    def __init__(self, config: dict) -> None:
        betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000, dtype=np.float64) ** 2
        ac = np.cumprod(1.0 - betas)
        self.table = np.sqrt((1 - ac) / ac)
        self.sigma_min, self.sigma_max = self.table[0], self.table[-1]
        self.t_max, self.t_min = 999.0, 0.0

    def sigma(self, t: float) -> float:
        lo, hi = math.floor(t), math.ceil(t)
        w = t - lo
        return math.exp((1 - w) * math.log(self.table[lo]) + w * math.log(self.table[hi]))


class RefFlux:
    """ModelSamplingFlux (μ, 10000 entries) or ModelSamplingDiscreteFlow with shift 1 (1000 entries)."""

    def __init__(self, mu: float | None) -> None:
        self.mu = mu
        n = 10000 if mu is not None else 1000
        self.table = np.array([self.sigma(i / n) for i in range(1, n + 1)])
        self.sigma_min, self.sigma_max = self.table[0], self.table[-1]
        self.t_max, self.t_min = self.sigma_max, self.sigma_min  # timestep(σ) = σ

    def sigma(self, t: float) -> float:
        if self.mu is None:
            return t
        return math.exp(self.mu) / (math.exp(self.mu) + (1 / t - 1))


def ref_schedule(ref, name: str, steps: int) -> list[float]:
    table = ref.table
    if name in ("normal", "sgm_uniform"):
        if name == "sgm_uniform":
            ts = np.linspace(ref.t_max, ref.t_min, steps + 1)[:-1]
        else:
            ts = np.linspace(ref.t_max, ref.t_min, steps)
        return [ref.sigma(float(t)) for t in ts] + [0.0]
    if name == "simple":
        stride = len(table) / steps
        return [table[-(1 + int(x * stride))] for x in range(steps)] + [0.0]
    if name == "ddim_uniform":
        stride = max(len(table) // steps, 1)
        return [table[x] for x in range(1, len(table), stride)][::-1] + [0.0]
    if name == "karras":
        ramp = np.linspace(0, 1, steps)
        lo, hi = ref.sigma_min ** (1 / 7), ref.sigma_max ** (1 / 7)
        return list((hi + ramp * (lo - hi)) ** 7) + [0.0]
    if name == "exponential":
        return list(np.exp(np.linspace(math.log(ref.sigma_max), math.log(ref.sigma_min), steps))) + [0.0]
    if name == "beta":
        ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * (len(table) - 1))
        out, last = [], None
        for t in ts:
            if t != last:
                out.append(table[int(t)])
            last = t
        return out + [0.0]
    if name == "linear_quadratic":
        if steps == 1:
            return [ref.sigma_max, 0.0]
        lin = steps // 2
        thr = 0.025
        diff = lin - thr * steps
        quad = steps - lin
        a = diff / (lin * quad ** 2)
        b = thr / lin - 2 * diff / quad ** 2
        c = a * lin ** 2
        noise = [i * thr / lin for i in range(lin)] + [a * i * i + b * i + c for i in range(lin, steps)] + [1.0]
        return [(1.0 - v) * ref.sigma_max for v in noise]
    if name == "kl_optimal":
        w = np.arange(steps) / (steps - 1) if steps > 1 else np.zeros(1)
        return list(np.tan(w * math.atan(ref.sigma_min) + (1 - w) * math.atan(ref.sigma_max))) + [0.0]
    raise KeyError(name)


def ref_ksampler(ref, sampler: str, name: str, steps: int, denoise: float) -> list[float]:
    def full(n: int) -> list[float]:
        if sampler in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
            s = ref_schedule(ref, name, n + 1)
            return s[:-2] + s[-1:]
        return ref_schedule(ref, name, n)

    if denoise > 0.9999:
        return full(steps)
    return full(int(steps / denoise))[-(steps + 1):]


# --- models ----------------------------------------------------------------------------------------

def _kinds():
    sd = fx.sd15().model
    return {
        "sd15": (sd, RefSD(sd.scheduler_config), SD_RTOL),
        "flux-dev": (fx.flux(True).model, RefFlux(1.15), FLOW_RTOL),
        "flux-schnell": (fx.flux(False).model, RefFlux(None), FLOW_RTOL),
    }


def _assert_close(ours: torch.Tensor, expected: list[float], rtol: float) -> None:
    assert ours.dtype == torch.float32 and ours.ndim == 1
    np.testing.assert_allclose(ours.double().numpy(), np.array(expected, dtype=np.float64), rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("kind", ["sd15", "flux-dev", "flux-schnell"])
@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps,denoise", [(1, 1.0), (4, 1.0), (7, 1.0), (20, 1.0), (30, 1.0), (5, 0.5), (10, 0.35),
                                           (6, 0.8), (3, 0.1)])
def test_scheduler_sigmas_equal_comfyui_formulas(kind, name, steps, denoise):
    if name == "kl_optimal" and steps == 1 and denoise == 1.0:
        pytest.skip("ComfyUI's kl_optimal divides by steps - 1 (NaN for a single step)")
    model, ref, rtol = _kinds()[kind]
    ours = ksampler_sigmas(model_sampling_for(model), "euler", name, steps, denoise)
    expected = ref_ksampler(ref, "euler", name, steps, denoise)
    _assert_close(ours, expected, rtol)
    if denoise == 1.0 and name not in ("beta", "ddim_uniform"):  # these two may merge/shift steps
        assert len(ours) == steps + 1
    assert ours[-1] == 0 and bool((ours[:-1] > 0).all())


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(SCHEDULER_NAMES), steps=st.integers(2, 60), denoise=st.floats(0.05, 1.0),
       sampler=st.sampled_from(["euler", "dpm_2", "uni_pc", "dpmpp_2m"]))
def test_ksampler_sigmas_property(name, steps, denoise, sampler):
    """Any (scheduler, steps, denoise, sampler): ComfyUI's schedule, and the user's ``steps`` is what runs."""
    model, ref, rtol = _kinds()["sd15"]
    ours = ksampler_sigmas(model_sampling_for(model), sampler, name, steps, denoise)
    _assert_close(ours, ref_ksampler(ref, sampler, name, steps, denoise), rtol)
    if denoise <= 0.9999 and name not in ("beta", "ddim_uniform"):
        assert len(ours) == steps + 1  # denoise never shortens the run


def test_denoise_runs_the_users_steps_at_lower_noise():
    """ComfyUI's rule, not diffusers' (which would run int(steps·denoise) of steps): 6 steps at 0.5 run
    the last 6 sigmas of a 12-step schedule."""
    ms = model_sampling_for(fx.sd15().model)
    half = ksampler_sigmas(ms, "euler", "normal", 6, 0.5)
    twelve = calculate_sigmas(ms, "normal", 12)
    assert torch.equal(half, twelve[-7:])
    assert float(half[0]) < float(ms.sigma_max) / 2


def test_discard_penultimate_sigma_samplers():
    ms = model_sampling_for(fx.sd15().model)
    for sampler in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        ours = ksampler_sigmas(ms, sampler, "karras", 5)
        five = calculate_sigmas(ms, "karras", 6)
        assert torch.equal(ours, torch.cat([five[:-2], five[-1:]])) and len(ours) == 6
    assert torch.equal(ksampler_sigmas(ms, "heun", "karras", 5), calculate_sigmas(ms, "karras", 5))


def test_model_sampling_tables_and_timesteps():
    sd = model_sampling_for(fx.sd15().model)
    ref = RefSD(fx.sd15().model.scheduler_config)
    np.testing.assert_allclose(sd.sigmas.double().numpy(), ref.table, rtol=SD_RTOL)
    # the denoiser is called at the nearest training timestep (in log σ), never a fractional one
    karras = calculate_sigmas(sd, "karras", 7)[:-1]
    for s in karras:
        t = int(sd.timestep(s))
        assert t == int(np.argmin(np.abs(np.log(ref.table) - math.log(float(s)))))
        assert float(sd.timestep(s)) == t
    # a whole timestep maps to the table entry itself
    assert float(sd.sigma(torch.tensor(500.0))) == float(sd.sigmas[500])
    dev = model_sampling_for(fx.flux(True).model)
    assert dev.mu == pytest.approx(1.15)  # FLUX.1-dev without a ModelSamplingFlux node: ComfyUI's default
    np.testing.assert_allclose(dev.sigmas.double().numpy(), RefFlux(1.15).table, rtol=FLOW_RTOL)
    schnell = model_sampling_for(fx.flux(False).model)
    assert schnell.mu is None and float(schnell.sigmas[749]) == 0.75


def test_model_sampling_flux_node_sets_mu_from_the_image_size(tmp_path):
    ctx = fx.make_ctx(tmp_path)
    model = ModelSamplingFlux().execute(ctx, model=fx.flux(True).model, max_shift=1.15, base_shift=0.5, width=512,
                                        height=768)[0]
    mu = 0.5 + (512 * 768 / 256 - 256) * (1.15 - 0.5) / (4096 - 256)
    ms = model_sampling_for(model)
    assert ms.mu == pytest.approx(mu)
    _assert_close(calculate_sigmas(ms, "simple", 9), ref_schedule(RefFlux(mu), "simple", 9), FLOW_RTOL)


def test_zsnr_rescales_the_table_like_comfyui(tmp_path):
    z = ModelSamplingDiscrete().execute(fx.make_ctx(tmp_path), model=fx.sd15().model, sampling="v_prediction",
                                        zsnr=True)[0]
    ms = model_sampling_for(z)
    sigmas = RefSD(fx.sd15().model.scheduler_config).table
    ac = 1 / (sigmas * sigmas + 1)
    root = np.sqrt(ac)
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    bar = root ** 2
    bar[-1] = 4.8973451890853435e-08
    expected = np.sqrt((1 - bar) / bar)
    np.testing.assert_allclose(ms.sigmas.double().numpy(), expected, rtol=1e-4)
    assert ms.kind == "v_prediction" and float(ms.sigma_max) > 4000


def test_basic_scheduler_node_and_sigma_tools(tmp_path):
    ctx = fx.make_ctx(tmp_path)
    model, ref, rtol = _kinds()["sd15"]
    sigmas = BasicScheduler().execute(ctx, model=model, scheduler="karras", steps=10, denoise=0.6)[0]
    # BasicScheduler has no discard-penultimate rule, KSampler's denoise rule otherwise
    _assert_close(sigmas, ref_schedule(ref, "karras", 16)[-11:], rtol)
    assert BasicScheduler().execute(ctx, model=model, scheduler="karras", steps=10, denoise=0.0)[0].numel() == 0
    high, low = SplitSigmas().execute(ctx, sigmas=sigmas, step=4)
    assert torch.equal(high, sigmas[:5]) and torch.equal(low, sigmas[4:])
    high, low = SplitSigmasDenoise().execute(ctx, sigmas=sigmas, denoise=0.3)
    assert torch.equal(low, sigmas[-4:]) and torch.equal(high, sigmas[:-3])


def test_every_scheduler_is_accepted_with_every_implemented_sampler():
    from nodes.diffusion.schedulers import supported_samplers

    for sampler in supported_samplers():
        for name in SCHEDULER_NAMES:
            assert KSampler.validate_inputs(sampler_name=sampler, scheduler=name) is True


def test_v_prediction_model_uses_the_same_table():
    model = replace(fx.sd15().model, prediction_type="v_prediction")
    assert torch.equal(model_sampling_for(model).sigmas, model_sampling_for(fx.sd15().model).sigmas)


@pytest.mark.parametrize("kind", ["sd15", "flux-dev", "flux-schnell"])
def test_timestep_range_percent_is_comfyuis_percent_to_sigma_inverted(kind):
    """Conditioning start/end percents cut where ComfyUI's percent_to_sigma puts them: a step at σ is in
    a [start, end] window iff σ(start) ≥ σ ≥ σ(end)."""
    model, ref, _ = _kinds()[kind]
    ms = model_sampling_for(model)
    for p in np.linspace(0.01, 0.99, 25):
        sigma = ms.percent_to_sigma(float(p))
        if kind == "sd15":  # ComfyUI: σ at timestep (1 - p)·999, log-linear between table entries
            assert sigma == pytest.approx(ref.sigma((1 - p) * 999), rel=SD_RTOL)
        else:
            assert sigma == pytest.approx(ref.sigma(1 - p), rel=FLOW_RTOL)
        assert ms.sigma_to_percent(sigma) == pytest.approx(p, abs=1e-5)
    assert ms.sigma_to_percent(float(ms.sigma_max)) == 0.0 and ms.sigma_to_percent(0.0) == 1.0
