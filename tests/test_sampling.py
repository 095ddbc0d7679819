"""Sampling behaviour beyond pipeline parity: progress/interrupt, step windows, custom sampling nodes,
model patches (merge, LoRA-style deltas, sampling overrides), conditioning areas/ranges, ControlNet hooks."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from graph_runtime.context import Interrupted, NodeError
from nodes.diffusion.types import ControlHook, WeightPatch
from nodes.sampling import (BasicGuider, BasicScheduler, CFGGuider, DisableNoise, KarrasScheduler, KSampler,
                            KSamplerAdvanced, KSamplerSelect, ModelMergeSimple, ModelSamplingDiscrete,
                            ModelSamplingFlux, RandomNoise, SamplerCustom, SamplerCustomAdvanced)
from tests import sampling_fixtures as fx

EMPTY = {"samples": torch.zeros(1, 4, 8, 8)}
EMPTY16 = {"samples": torch.zeros(1, 16, 8, 8)}


def _ks(ctx, model, pos, neg, latent=EMPTY, **kw):
    args = dict(seed=11, steps=4, cfg=6.0, sampler_name="euler", scheduler="normal", denoise=1.0)
    args.update(kw)
    return KSampler().execute(ctx, model=model, positive=pos, negative=neg, latent_image=latent, **args)[0]["samples"]


# --- progress, previews, interrupt, device record -----------------------------------------------

@pytest.mark.parametrize("sampler,steps", [("euler", 4), ("heun", 3), ("dpm_2_ancestral", 3), ("dpmpp_2m", 5)])
def test_progress_once_per_step_with_previews(tmp_path, sampler, steps):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    events = []
    ctx = fx.make_ctx(tmp_path, progress=lambda node, v, total, preview: events.append((node, v, total, preview)))
    _ks(ctx, tiny.model, pos, neg, steps=steps, sampler_name=sampler)
    assert [(v, t) for _, v, t, _ in events] == [(i + 1, steps) for i in range(steps)]
    assert all(node == "1" for node, *_ in events)
    assert all(isinstance(p, Image.Image) and p.size == (64, 64) for *_, p in events)
    assert ctx.info["device"] == "cpu" and ctx.info["dtype"] == "float32"


def test_interrupt_mid_sampling_raises_and_restores_weights(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    before = {k: v.clone() for k, v in tiny.model.denoiser.state_dict().items()}
    calls = []
    ctx = fx.make_ctx(tmp_path, progress=lambda *a: calls.append(a), interrupted=lambda: len(calls) >= 2)
    delta = {"conv_in.weight": torch.ones_like(tiny.model.denoiser.conv_in.weight)}
    patched = tiny.model.with_patch(WeightPatch("test", 0.5, delta))
    with pytest.raises(Interrupted):
        _ks(ctx, patched, pos, neg, steps=10)
    assert len(calls) == 2  # stopped right after the second step, not at the end
    after = tiny.model.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_no_previews_when_disabled(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    previews = []
    ctx = fx.make_ctx(tmp_path, preview_method="none", progress=lambda n, v, t, p: previews.append(p))
    _ks(ctx, tiny.model, pos, neg, steps=2)
    assert previews == [None, None]


def test_bf16_option_runs_in_bf16_and_records_it(tmp_path):
    from models.tools.tiny_models import build_sd15

    tiny = fx._wrap(build_sd15(), fx.sd15().model.family, "epsilon")  # private copy: this test casts weights
    pos, neg = fx.sd_conds(tiny)
    ref = _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, steps=2)
    ctx = fx.make_ctx(tmp_path, dtype="bf16")
    out = _ks(ctx, tiny.model, pos, neg, steps=2)
    assert ctx.info["dtype"] == "bfloat16" and next(tiny.model.denoiser.parameters()).dtype == torch.bfloat16
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    rel = (out - ref).abs().max() / ref.abs().max()
    assert 0 < rel < 0.05  # bf16 rounding (8-bit mantissa), same picture


# --- img2img, step windows ---------------------------------------------------------------------

def test_denoise_zero_returns_input_and_partial_denoise_runs_the_users_steps(tmp_path):
    """ComfyUI's rule: denoise 0.35 with 10 steps runs 10 steps — the last 10 of a 28-step schedule.
    (diffusers' strength rule would run int(10·0.35) = 3 of 10.)"""
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    src = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    ctx = fx.make_ctx(tmp_path)
    assert KSampler().execute(ctx, model=tiny.model, seed=1, steps=4, cfg=5.0, sampler_name="euler",
                              scheduler="normal", positive=pos, negative=neg, latent_image=src, denoise=0.0)[0] is src
    counts = []
    ctx = fx.make_ctx(tmp_path, progress=lambda n, v, t, p: counts.append((v, t)))
    out = _ks(ctx, tiny.model, pos, neg, latent=src, steps=10, denoise=0.35)
    assert counts == [(i + 1, 10) for i in range(10)]
    full = _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, latent=src, steps=10)
    # low denoise stays closer to the source than a full generation
    assert (out - src["samples"]).abs().mean() < (full - src["samples"]).abs().mean()


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m"])
def test_two_stage_advanced_equals_one_run(tmp_path, sampler):
    """Stage 1 hands on leftover noise (k-diffusion convention), stage 2 continues without new noise."""
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    kw = dict(noise_seed=5, steps=6, cfg=5.0, sampler_name=sampler, scheduler="normal", positive=pos, negative=neg)
    adv = KSamplerAdvanced()
    whole = adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="enable", latent_image=EMPTY,
                        start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable", **kw)[0]
    first = adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="enable", latent_image=EMPTY,
                        start_at_step=0, end_at_step=3, return_with_leftover_noise="enable", **kw)[0]
    second = adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="disable", latent_image=first,
                         start_at_step=3, end_at_step=10000, return_with_leftover_noise="disable", **kw)[0]
    if sampler == "dpmpp_2m":  # a multistep solver restarts its history at the split: close, not equal
        assert (second["samples"] - whole["samples"]).abs().max() < 0.05 * whole["samples"].abs().max()
    else:
        assert torch.allclose(second["samples"], whole["samples"], atol=1e-4, rtol=1e-4)
    # the intermediate latent is still noisy: far from the final one
    assert (first["samples"] - whole["samples"]).abs().max() > 0.1
    whole_plain = _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, seed=5, steps=6, cfg=5.0, sampler_name=sampler)
    assert torch.equal(whole["samples"], whole_plain)


def test_end_step_without_leftover_noise_returns_denoised(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    kw = dict(noise_seed=5, steps=6, cfg=5.0, sampler_name="euler", scheduler="normal", positive=pos, negative=neg,
              latent_image=EMPTY, add_noise="enable", start_at_step=0, end_at_step=3)
    leftover = KSamplerAdvanced().execute(fx.make_ctx(tmp_path), model=tiny.model,
                                          return_with_leftover_noise="enable", **kw)[0]["samples"]
    denoised = KSamplerAdvanced().execute(fx.make_ctx(tmp_path), model=tiny.model,
                                          return_with_leftover_noise="disable", **kw)[0]["samples"]
    assert (denoised - leftover).abs().max() > 1.0
    # ComfyUI's meaning: the first 3 sigmas of the 6-step schedule, then straight to sigma 0
    ctx = fx.make_ctx(tmp_path)
    six = BasicScheduler().execute(ctx, model=tiny.model, scheduler="normal", steps=6, denoise=1.0)[0]
    truncated = torch.cat([six[:3], torch.zeros(1)])
    euler = KSamplerSelect().execute(ctx, sampler_name="euler")[0]
    ref = SamplerCustom().execute(ctx, model=tiny.model, add_noise=True, noise_seed=5, cfg=5.0, positive=pos,
                                  negative=neg, sampler=euler, sigmas=truncated, latent_image=EMPTY)[0]["samples"]
    assert torch.allclose(denoised, ref, rtol=1e-4, atol=1e-3)


# --- custom sampling -------------------------------------------------------------------------------

def test_sampler_custom_advanced_chain_equals_ksampler(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    noise = RandomNoise().execute(ctx, noise_seed=21)[0]
    guider = CFGGuider().execute(ctx, model=tiny.model, positive=pos, negative=neg, cfg=6.0)[0]
    sampler = KSamplerSelect().execute(ctx, sampler_name="dpmpp_2m_sde")[0]
    sigmas = BasicScheduler().execute(ctx, model=tiny.model, scheduler="karras", steps=4, denoise=1.0)[0]
    assert len(sigmas) == 5 and sigmas[0] == pytest.approx(14.6146, abs=1e-3) and sigmas[-1] == 0
    out, denoised = SamplerCustomAdvanced().execute(ctx, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                                                    latent_image=EMPTY)
    ref = _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, seed=21, sampler_name="dpmpp_2m_sde", scheduler="karras")
    assert torch.equal(out["samples"], ref)
    assert denoised["samples"].shape == ref.shape

    out2 = SamplerCustom().execute(ctx, model=tiny.model, add_noise=True, noise_seed=21, cfg=6.0, positive=pos,
                                   negative=neg, sampler=sampler, sigmas=sigmas, latent_image=EMPTY)[0]
    assert torch.equal(out2["samples"], ref)


def test_denoised_output_is_last_x0_estimate(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    sigmas = BasicScheduler().execute(ctx, model=tiny.model, scheduler="normal", steps=4, denoise=1.0)[0]
    sampler = KSamplerSelect().execute(ctx, sampler_name="euler")[0]
    out, den = SamplerCustom().execute(ctx, model=tiny.model, add_noise=True, noise_seed=1, cfg=5.0, positive=pos,
                                       negative=neg, sampler=sampler, sigmas=sigmas, latent_image=EMPTY)
    # Euler's last step goes to sigma 0, i.e. to its x0 estimate
    assert torch.allclose(out["samples"], den["samples"], atol=1e-5)


def test_explicit_sigmas_drive_every_sampler(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    custom = KarrasScheduler().execute(ctx, steps=4, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0)[0]
    named = BasicScheduler().execute(ctx, model=tiny.model, scheduler="karras", steps=4, denoise=1.0)[0]
    assert torch.allclose(custom, named, atol=1e-3)
    euler = KSamplerSelect().execute(ctx, sampler_name="euler")[0]
    run = dict(model=tiny.model, add_noise=True, noise_seed=3, cfg=5.0, positive=pos, negative=neg, latent_image=EMPTY)
    a = SamplerCustom().execute(ctx, sampler=euler, sigmas=custom, **run)[0]["samples"]
    b = SamplerCustom().execute(ctx, sampler=euler, sigmas=named, **run)[0]["samples"]
    assert torch.allclose(a, b, atol=1e-3)
    # a different explicit schedule gives a different result
    c = SamplerCustom().execute(ctx, sampler=euler, sigmas=KarrasScheduler().execute(
        ctx, steps=4, sigma_max=5.0, sigma_min=0.1, rho=3.0)[0], **run)[0]["samples"]
    assert (a - c).abs().max() > 1e-2
    # any sampler follows an explicit schedule (ComfyUI's samplers all take sigmas)
    dpm = KSamplerSelect().execute(ctx, sampler_name="dpmpp_2m")[0]
    d = SamplerCustom().execute(ctx, sampler=dpm, sigmas=named, **run)[0]["samples"]
    ref = _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, seed=3, cfg=5.0, sampler_name="dpmpp_2m", scheduler="karras")
    assert torch.equal(d, ref)


def test_disable_noise_and_basic_guider_on_flux(tmp_path):
    tiny = fx.flux(True)
    cond = fx.flux_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    guider = BasicGuider().execute(ctx, model=tiny.model, conditioning=cond)[0]
    sampler = KSamplerSelect().execute(ctx, sampler_name="euler")[0]
    sigmas = BasicScheduler().execute(ctx, model=tiny.model, scheduler="simple", steps=4, denoise=1.0)[0]
    out = SamplerCustomAdvanced().execute(ctx, noise=RandomNoise().execute(ctx, noise_seed=8)[0], guider=guider,
                                          sampler=sampler, sigmas=sigmas, latent_image=EMPTY16)[0]
    ref = _ks(fx.make_ctx(tmp_path), tiny.model, cond, None, latent=EMPTY16, seed=8, cfg=1.0, scheduler="simple")
    assert torch.equal(out["samples"], ref)
    quiet = SamplerCustomAdvanced().execute(ctx, noise=DisableNoise().execute(ctx)[0], guider=guider, sampler=sampler,
                                            sigmas=sigmas, latent_image=EMPTY16)[0]
    assert (quiet["samples"] - out["samples"]).abs().max() > 1e-2


# --- model patches ---------------------------------------------------------------------------------

def test_model_sampling_flux_sets_the_shift(tmp_path):
    """FLUX.1-dev samples with μ = 1.15 (ComfyUI's default, the 1024×1024 value) unless a
    ModelSamplingFlux node sets μ from the image size; schnell is unshifted until one does."""
    tiny = fx.flux(True)
    cond = fx.flux_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    base = _ks(ctx, tiny.model, cond, None, latent=EMPTY16, cfg=1.0, scheduler="simple")
    big = ModelSamplingFlux().execute(ctx, model=tiny.model, max_shift=1.15, base_shift=0.5, width=1024, height=1024)[0]
    assert big.sampling["mu"] == pytest.approx(1.15)
    assert torch.allclose(_ks(ctx, big, cond, None, latent=EMPTY16, cfg=1.0, scheduler="simple"), base, atol=1e-5)
    small = ModelSamplingFlux().execute(ctx, model=tiny.model, max_shift=1.15, base_shift=0.5, width=64, height=64)[0]
    assert (_ks(ctx, small, cond, None, latent=EMPTY16, cfg=1.0, scheduler="simple") - base).abs().max() > 1e-3
    schnell = fx.flux(False)
    shifted = ModelSamplingFlux().execute(ctx, model=schnell.model, max_shift=1.15, base_shift=0.5, width=1024,
                                          height=1024)[0]
    scond = fx.flux_conds(schnell)
    assert (_ks(ctx, shifted, scond, None, latent=EMPTY16, cfg=1.0, scheduler="simple")
            - _ks(ctx, schnell.model, scond, None, latent=EMPTY16, cfg=1.0, scheduler="simple")).abs().max() > 1e-3
    with pytest.raises(NodeError):
        ModelSamplingFlux().execute(ctx, model=fx.sd15().model, max_shift=1.15, base_shift=0.5, width=64, height=64)


def test_model_sampling_discrete_v_prediction_and_zsnr(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    eps = _ks(ctx, tiny.model, pos, neg)
    v = ModelSamplingDiscrete().execute(ctx, model=tiny.model, sampling="v_prediction", zsnr=False)[0]
    assert v.prediction_type == "v_prediction" and tiny.model.prediction_type == "epsilon"
    assert (_ks(ctx, v, pos, neg) - eps).abs().max() > 1e-3
    z = ModelSamplingDiscrete().execute(ctx, model=tiny.model, sampling="v_prediction", zsnr=True)[0]
    for sampler in ("euler", "heun", "dpmpp_2m"):
        out = _ks(ctx, z, pos, neg, scheduler="simple", sampler_name=sampler)
        assert torch.isfinite(out).all() and (out - _ks(ctx, v, pos, neg, scheduler="simple",
                                                        sampler_name=sampler)).abs().max() > 1e-3


def test_model_merge_simple_blends_at_use_time(tmp_path):
    from models.tools.tiny_models import build_sd15

    tiny = fx.sd15()
    other = fx._wrap(build_sd15(seed=99), tiny.model.family, "epsilon")
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    before = {k: v.clone() for k, v in tiny.model.denoiser.state_dict().items()}
    a = _ks(ctx, tiny.model, pos, neg)
    b = _ks(ctx, other.model, pos, neg)
    merged0 = ModelMergeSimple().execute(ctx, model1=tiny.model, model2=other.model, ratio=0.0)[0]
    merged1 = ModelMergeSimple().execute(ctx, model1=tiny.model, model2=other.model, ratio=1.0)[0]
    half = ModelMergeSimple().execute(ctx, model1=tiny.model, model2=other.model, ratio=0.5)[0]
    assert merged1 is tiny.model
    assert torch.equal(_ks(ctx, merged0, pos, neg), b)
    h = _ks(ctx, half, pos, neg)
    assert (h - a).abs().max() > 1e-3 and (h - b).abs().max() > 1e-3
    after = tiny.model.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # base weights untouched
    assert torch.equal(_ks(ctx, tiny.model, pos, neg), a)


def test_weight_patch_applied_during_the_run_only(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    w = tiny.model.denoiser.conv_in.weight
    up = torch.randn(w.shape[0], 2, generator=torch.Generator().manual_seed(1))
    down = torch.randn(2, w[0].numel(), generator=torch.Generator().manual_seed(2))
    patched = tiny.model.with_patch(WeightPatch("lora", 0.8, {"conv_in.weight": (up, down, 2.0)}))
    base = _ks(ctx, tiny.model, pos, neg)
    assert (_ks(ctx, patched, pos, neg) - base).abs().max() > 1e-3
    zero = tiny.model.with_patch(WeightPatch("lora", 0.0, {"conv_in.weight": (up, down, 2.0)}))
    assert torch.equal(_ks(ctx, zero, pos, neg), base)
    assert torch.equal(_ks(ctx, tiny.model, pos, neg), base)


# --- conditioning features -------------------------------------------------------------------------

def test_area_strength_and_timestep_ranges(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    other = fx.sd_conds(tiny, seed=50)[0][0]
    ctx = fx.make_ctx(tmp_path)
    base = _ks(ctx, tiny.model, pos, neg)
    # an area entry only in the top-left quarter changes the result mostly there
    area = other.with_options(area=(4, 4, 0, 0), strength=3.0)
    with_area = _ks(ctx, tiny.model, pos + [area], neg)
    diff = (with_area - base).abs().mean(1)[0]
    assert diff[:4, :4].mean() > 3 * diff[4:, 4:].mean()
    # two prompts split by timestep range differ from either prompt alone
    early = pos[0].with_options(start_percent=0.0, end_percent=0.5)
    late = other.with_options(start_percent=0.5, end_percent=1.0)
    split = _ks(ctx, tiny.model, [early, late], neg)
    only_other = _ks(ctx, tiny.model, [other], neg)
    assert (split - base).abs().max() > 1e-3 and (split - only_other).abs().max() > 1e-3
    # a masked entry (mask option) only acts inside its mask
    mask = torch.zeros(1, 64, 64)
    mask[:, 32:, 32:] = 1
    masked = _ks(ctx, tiny.model, pos + [other.with_options(mask=mask, mask_strength=2.0)], neg)
    mdiff = (masked - base).abs().mean(1)[0]
    assert mdiff[4:, 4:].mean() > 3 * mdiff[:4, :4].mean()


class _RecordingHook(ControlHook):
    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.calls: list[tuple[int, float]] = []

    def residuals(self, *, family, sample, timestep, encoder_hidden_states, percent, added_cond_kwargs=None,
                  flux_kwargs=None):
        self.calls.append((sample.shape[0], percent))
        # the tiny SD1.5 UNet's skip connections: conv_in, block 0 (resnet, downsampler), block 1 (resnet)
        h, w = sample.shape[-2:]
        downs = tuple(torch.full((sample.shape[0], ch, h // f, w // f), self.scale)
                      for ch, f in [(32, 1), (32, 1), (32, 2), (64, 2)])
        return {"down_block_additional_residuals": downs,
                "mid_block_additional_residual": torch.full((sample.shape[0], 64, h // 2, w // 2), self.scale)}


def test_controlnet_hook_residuals_reach_the_unet(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    base = _ks(ctx, tiny.model, pos, neg)
    shared = _RecordingHook(0.0)
    out = _ks(ctx, tiny.model, [pos[0].with_options(control=shared)], [neg[0].with_options(control=shared)])
    assert torch.equal(out, base)  # zero residuals change nothing, and the batch path is unchanged
    assert [n for n, _ in shared.calls] == [2, 2, 2, 2]  # one call on the [uncond, cond] batch per step
    percents = [p for _, p in shared.calls]
    assert percents == sorted(percents) and percents[0] == 0.0
    strong = _RecordingHook(0.5)
    out2 = _ks(ctx, tiny.model, [pos[0].with_options(control=strong)], neg)  # positive only: per-side call
    assert [n for n, _ in strong.calls] == [1, 1, 1, 1]
    assert (out2 - base).abs().max() > 1e-3


def test_empty_latent_of_another_family_is_widened_like_comfyui(tmp_path):
    tiny = fx.flux(False)
    cond = fx.flux_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    out = _ks(ctx, tiny.model, cond, None, latent=EMPTY, cfg=1.0, scheduler="simple")  # EmptyLatentImage: 4 ch
    assert out.shape == (1, 16, 8, 8)
    assert torch.equal(out, _ks(ctx, tiny.model, cond, None, latent=EMPTY16, cfg=1.0, scheduler="simple"))
    with pytest.raises(NodeError, match="4 channels but the model expects 16"):
        _ks(ctx, tiny.model, cond, None, latent={"samples": torch.ones(1, 4, 8, 8)}, cfg=1.0, scheduler="simple")


def test_flux_area_conditioning_snaps_to_token_patches(tmp_path):
    tiny = fx.flux(True)
    cond = fx.flux_conds(tiny)
    other = fx.flux_conds(tiny, seed=9)[0]
    ctx = fx.make_ctx(tmp_path)
    base = _ks(ctx, tiny.model, cond, None, latent=EMPTY16, cfg=1.0, scheduler="simple")
    out = _ks(ctx, tiny.model, cond + [other.with_options(area=(3, 5, 1, 3), strength=2.0)], None, latent=EMPTY16,
              cfg=1.0, scheduler="simple")  # odd sizes/offsets would not pack into 2×2 tokens
    diff = (out - base).abs().mean(1)[0]
    assert torch.isfinite(out).all() and diff[:4, 2:8].mean() > 3 * diff[6:, :2].mean()


# --- ComfyUI's step counts on the tiny models: img2img, hires fix, two-stage KSamplerAdvanced --------

class _UNetCalls:
    """Counts denoiser calls and records each call's timestep and input."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.timesteps: list[float] = []
        self.inputs: list[torch.Tensor] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample, t = args[0], args[1]
        self.inputs.append(sample.detach().clone())
        self.timesteps.append(float(t.reshape(-1)[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _timestep_of(model, sigma: float) -> float:
    from nodes.diffusion.model_sampling import model_sampling_for

    return float(model_sampling_for(model).timestep(torch.tensor(sigma)))


@pytest.mark.parametrize("steps,denoise", [(6, 0.5), (10, 0.35), (4, 0.75), (3, 1.0)])
def test_img2img_model_calls_and_schedule_follow_comfyui(tmp_path, steps, denoise):
    from nodes.diffusion.sampling import schedule

    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    src = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    with _UNetCalls(tiny.model.denoiser) as calls:
        _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, latent=src, steps=steps, denoise=denoise)
    assert len(calls.timesteps) == steps  # the widget's steps run (one batched [uncond, cond] call each)
    longer = schedule(tiny.model, "euler", "normal", int(steps / denoise))
    assert calls.timesteps == [_timestep_of(tiny.model, float(s)) for s in longer[-(steps + 1):-1]]


def test_hires_fix_model_calls(tmp_path):
    """txt2img, upscale the latent 1.5×, a second KSampler at denoise 0.5: 5 + 4 model calls, the second
    pass starting at the middle of an 8-step schedule."""
    from nodes.diffusion.sampling import schedule
    from nodes.latent import LatentUpscaleBy

    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    with _UNetCalls(tiny.model.denoiser) as calls:
        first = KSampler().execute(ctx, model=tiny.model, seed=4, steps=5, cfg=6.0, sampler_name="euler",
                                   scheduler="normal", positive=pos, negative=neg, latent_image=EMPTY, denoise=1.0)[0]
        big = LatentUpscaleBy().execute(ctx, samples=first, upscale_method="nearest-exact", scale_by=1.5)[0]
        second = KSampler().execute(ctx, model=tiny.model, seed=4, steps=4, cfg=6.0, sampler_name="dpmpp_2m",
                                    scheduler="karras", positive=pos, negative=neg, latent_image=big, denoise=0.5)[0]
    assert len(calls.timesteps) == 5 + 4
    assert calls.inputs[5].shape[-1] == 12 and second["samples"].shape == (1, 4, 12, 12)
    eight = schedule(tiny.model, "dpmpp_2m", "karras", 8)
    assert calls.timesteps[5:] == [_timestep_of(tiny.model, float(s)) for s in eight[4:-1]]


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_advanced_stages_model_calls(tmp_path, sampler):
    """A 6-step schedule split at step 4: the first stage makes the calls of steps 0-3, the second of 4-5;
    together exactly the calls of one run (heun: two per step, one for the last step to σ = 0)."""
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    kw = dict(noise_seed=5, steps=6, cfg=5.0, sampler_name=sampler, scheduler="karras", positive=pos, negative=neg)
    adv = KSamplerAdvanced()
    per_step = 2 if sampler == "heun" else 1
    with _UNetCalls(tiny.model.denoiser) as calls:
        first = adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="enable", latent_image=EMPTY,
                            start_at_step=0, end_at_step=4, return_with_leftover_noise="enable", **kw)[0]
    assert len(calls.timesteps) == 4 * per_step
    with _UNetCalls(tiny.model.denoiser) as calls2:
        adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="disable", latent_image=first,
                    start_at_step=4, end_at_step=10000, return_with_leftover_noise="disable", **kw)
    assert len(calls2.timesteps) == 2 * per_step - (per_step - 1)
    with _UNetCalls(tiny.model.denoiser) as whole:
        _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, seed=5, steps=6, cfg=5.0, sampler_name=sampler,
            scheduler="karras")
    assert calls.timesteps + calls2.timesteps == whole.timesteps
    # end without leftover noise: the cut σ becomes 0, so the last kept step denoises fully
    with _UNetCalls(tiny.model.denoiser) as calls3:
        adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="enable", latent_image=EMPTY,
                    start_at_step=0, end_at_step=3, return_with_leftover_noise="disable", **kw)
    assert len(calls3.timesteps) == 3 * per_step - (per_step - 1)
    # a start past the end runs nothing and returns the input
    with _UNetCalls(tiny.model.denoiser) as none:
        out = adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="enable", latent_image=first,
                          start_at_step=6, end_at_step=10000, return_with_leftover_noise="disable", **kw)[0]
    assert none.timesteps == [] and torch.equal(out["samples"], first["samples"])


def test_run_again_with_a_new_seed(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    for sampler in ("euler", "euler_ancestral", "dpmpp_sde"):
        a = _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, seed=7, sampler_name=sampler)
        again = _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, seed=7, sampler_name=sampler)
        other = _ks(fx.make_ctx(tmp_path), tiny.model, pos, neg, seed=8, sampler_name=sampler)
        assert torch.equal(a, again) and (a - other).abs().max() > 1e-2


def test_initial_noise_and_batch_index_reach_the_model(tmp_path):
    """The first model input is the seed's CPU noise × √(1 + σ_max²) (ComfyUI's full-denoise start),
    scaled by the model's input scaling 1/√(1 + σ²): i.e. the noise itself.  With a LATENT batch_index
    (an image picked out of a batch) row j gets the batch_index[j]-th single-image draw."""
    tiny = fx.sd15()
    pos, _ = fx.sd_conds(tiny)
    shape = (1, 4, 8, 8)
    g = torch.Generator("cpu").manual_seed(9)
    draws = [torch.randn(shape, generator=g) for _ in range(3)]
    with _UNetCalls(tiny.model.denoiser) as calls:
        _ks(fx.make_ctx(tmp_path), tiny.model, pos, None, seed=9, cfg=1.0, steps=2)
        _ks(fx.make_ctx(tmp_path), tiny.model, pos, None, seed=9, cfg=1.0, steps=2,
            latent={"samples": torch.zeros(shape), "batch_index": [2]})
    torch.testing.assert_close(calls.inputs[0], draws[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(calls.inputs[2], draws[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_inpainting_noise_mask_semantics(tmp_path, sampler):
    """Before each model call the kept region (mask 0) holds the source latent noised to the current σ
    with the run's noise (ddim: noise from seed + 1); after the run it holds the source."""
    from nodes.diffusion.model_sampling import model_sampling_for
    from nodes.diffusion.sampling import latent_format, schedule

    tiny = fx.sd15()
    pos, _ = fx.sd_conds(tiny)
    src = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 64, 64)
    mask[:, :32, :] = 1.0  # repaint the top half
    latent = {"samples": src, "noise_mask": mask}
    with _UNetCalls(tiny.model.denoiser) as calls:
        out = _ks(fx.make_ctx(tmp_path), tiny.model, pos, None, latent=latent, seed=2, cfg=1.0, steps=4,
                  sampler_name=sampler, denoise=0.8)
    scale, shift = latent_format(tiny.model)
    model_src = (src - shift) * scale
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2 + (sampler == "ddim")))
    sigmas = schedule(tiny.model, sampler, "normal", 4, 0.8)
    ms = model_sampling_for(tiny.model)
    for x_in, sigma in zip(calls.inputs, sigmas[:-1]):
        state = x_in * torch.sqrt(sigma ** 2 + 1)  # undo the model's input scaling
        torch.testing.assert_close(state[..., 4:, :], (model_src + noise * sigma)[..., 4:, :], rtol=1e-5, atol=1e-5)
    assert float(ms.timestep(sigmas[0])) == calls.timesteps[0]
    torch.testing.assert_close(out[..., 4:, :], src[..., 4:, :], rtol=1e-5, atol=1e-5)
    assert (out[..., :4, :] - src[..., :4, :]).abs().max() > 1e-2


def test_latent_from_batch_keeps_each_images_noise(tmp_path):
    """An image taken out of a batch (LatentFromBatch) starts from the noise it had in the batch, so a
    deterministic sampler gives it the batch's picture; batch_index survives RepeatLatentBatch
    (ComfyUI's offsets).  (Ancestral step noise is drawn for the batch as a whole, as in ComfyUI.)"""
    from nodes.latent import EmptyLatentImage, LatentFromBatch, RepeatLatentBatch

    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    ctx = fx.make_ctx(tmp_path)
    batch = EmptyLatentImage().execute(ctx, width=64, height=64, batch_size=3)[0]
    picked = LatentFromBatch().execute(ctx, samples=batch, batch_index=2, length=1)[0]
    assert picked["batch_index"] == [2] and picked["samples"].shape[0] == 1
    alone = _ks(ctx, tiny.model, pos, neg, latent=picked, sampler_name="euler")
    in_batch = _ks(ctx, tiny.model, pos, neg, latent=batch)[2]
    assert torch.allclose(alone[0], in_batch, rtol=1e-4, atol=1e-3)  # (batch-size dependent kernels: 1e-6)
    plain = _ks(ctx, tiny.model, pos, neg, latent={"samples": picked["samples"]}, sampler_name="euler")
    assert (plain - alone).abs().max() > 1e-2  # without the batch_index it would be row 0's noise
    two = LatentFromBatch().execute(ctx, samples=batch, batch_index=1, length=5)[0]
    assert two["batch_index"] == [1, 2] and two["samples"].shape[0] == 2
    repeated = RepeatLatentBatch().execute(ctx, samples=two, amount=3)[0]
    assert repeated["samples"].shape[0] == 6 and repeated["batch_index"] == [1, 2, 3, 4, 5, 6]
    masked = {**batch, "noise_mask": torch.ones(3, 1, 64, 64)}
    assert LatentFromBatch().execute(ctx, samples=masked, batch_index=1, length=1)[0]["noise_mask"].shape[0] == 1


def test_flux_two_stage_advanced_hands_on_leftover_noise(tmp_path):
    """FLUX: a stage handing on leftover noise returns x/(1 - σ) (ComfyUI's inverse noise scaling), and
    the next stage without new noise scales it back by (1 - σ): the two stages equal one run."""
    tiny = fx.flux(True)
    cond = fx.flux_conds(tiny)
    kw = dict(noise_seed=6, steps=5, cfg=1.0, sampler_name="euler", scheduler="simple", positive=cond, negative=cond)
    adv = KSamplerAdvanced()
    whole = adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="enable", latent_image=EMPTY16,
                        start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable", **kw)[0]
    first = adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="enable", latent_image=EMPTY16,
                        start_at_step=0, end_at_step=2, return_with_leftover_noise="enable", **kw)[0]
    second = adv.execute(fx.make_ctx(tmp_path), model=tiny.model, add_noise="disable", latent_image=first,
                         start_at_step=2, end_at_step=10000, return_with_leftover_noise="disable", **kw)[0]
    assert torch.allclose(second["samples"], whole["samples"], rtol=1e-4, atol=1e-4)
    assert (first["samples"] - whole["samples"]).abs().max() > 0.1
