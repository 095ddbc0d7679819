"""Node chain vs diffusers pipeline: same tiny model, seed, schedule, noise and guidance → same image.

Each test runs encode → KSampler → VAEDecode through the node classes' ``execute`` and the matching
diffusers pipeline, on CPU in float32.  Our sampling follows **ComfyUI's** semantics; the pipelines
are configured to make ComfyUI's choices where their defaults differ, and each difference is named
where it is neutralised:

* **first noise.**  ComfyUI starts a full denoise at ``noise·√(1 + σ_max²)``; diffusers' Euler-type
  schedulers with ``linspace``/``trailing`` spacing start at ``noise·σ_max`` (:func:`_comfy_class`
  gives them ComfyUI's start);
* **timesteps.**  ComfyUI calls the UNet at the training timestep nearest each σ, diffusers at the
  fractional timestep of karras/exponential sigmas (:func:`_comfy_class` with ``sigmas``);
* **schedules** that diffusers computes otherwise (karras in float64, ``ddim_uniform``'s start) are
  handed to it as ComfyUI computes them (their values are checked against the published formulas
  in ``test_schedules.py``);
* **step noise.**  ComfyUI seeds ancestral steps from a fresh generator (seed + 1 on the CPU) and SDE
  steps from a Brownian tree; the pipeline gets the same noise.

With that, Euler, Euler ancestral, Heun, DDIM (= Euler on ``ddim_uniform``), SDXL, FLUX and img2img
are **bit-exact** (max abs difference 0.0: the same batched ``[uncond, cond]`` calls on the same
values).  Samplers whose diffusers form computes the same formulas in another space (DPM-Solver++,
its SDE variant and UniPC, in variance-preserving space) agree to ``ROUNDING``.  LMS is not compared:
ComfyUI's last LMS step jumps to the denoised estimate, diffusers' integrates down to σ = 0.
Where ComfyUI and diffusers *disagree*
— ``denoise`` < 1 (ComfyUI: the last ``steps`` of an ``int(steps/denoise)``-step schedule; diffusers:
``int(steps·strength)`` of ``steps``) and inpainting (ComfyUI blends the kept region before each model
call) — the tests follow ComfyUI and say how the pipeline was set up to do the same.
Prompts go through CLIPTextEncode / FluxGuidance on our side and the pipeline's own text encoding
on the other, so the whole chain text → image is compared.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nodes.conditioning import CLIPTextEncode, FluxGuidance
from nodes.diffusion.sampling import schedule
from nodes.diffusion.types import CondEntry
from nodes.latent import EmptyLatentImage, EmptySD3LatentImage, SetLatentNoiseMask, VAEDecode, VAEEncode
from nodes.sampling import KSampler, ModelSamplingFlux
from tests import sampling_fixtures as fx

EXACT = 0.0
ROUNDING = 1e-5  # same formulas, another float32 operation order (measured ≤ 2e-6; 1/255 = 4e-3)
SEED = 1234


def _encode(tmp_path, tiny: fx.Tiny, text: str):
    return CLIPTextEncode().execute(fx.make_ctx(tmp_path, class_type="CLIPTextEncode"), text=text, clip=tiny.clip)[0]


def _max_diff(node_image: torch.Tensor, pipe_images: torch.Tensor) -> float:
    assert node_image.shape == pipe_images.permute(0, 2, 3, 1).shape
    return (node_image - pipe_images.permute(0, 2, 3, 1)).abs().max().item()


def _sd_pipe(tiny: fx.Tiny, cls=None, scheduler=None):
    from diffusers import StableDiffusionPipeline

    c = tiny.components
    cls = cls or StableDiffusionPipeline
    return cls(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=c["unet"],
               scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _nearest_timesteps(scheduler, sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's model timestep: the training timestep whose σ is nearest in log σ."""
    ac = scheduler.alphas_cumprod.double()
    log_table = (((1 - ac) / ac) ** 0.5).log()
    return (sigmas.double().log()[None, :] - log_table[:, None]).abs().argmin(0).float()


def _comfy_class(base, *, sigmas: torch.Tensor | None = None, comfy_start: bool = True, noise=None):
    """A diffusers scheduler class set up the way ComfyUI runs (see the module docstring).

    ``sigmas``: the schedule to run (with timesteps quantised like ComfyUI's); ``comfy_start``: the
    first noise √(1 + σ_max²)·noise (schedulers working in variance-preserving space — DPM-Solver,
    UniPC — start from plain noise, which is the same thing); ``noise(σ, σ_next)``: the SDE step noise to use.
    """
    class Comfy(base):
        if sigmas is not None:
            def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
                super().set_timesteps(len(sigmas) - 1, device=device)
                self.sigmas = sigmas.clone().to(self.sigmas.device)
                self.timesteps = _nearest_timesteps(self, sigmas[:-1]).to(device)

        if comfy_start:
            @property
            def init_noise_sigma(self):
                return (self.sigmas.max() ** 2 + 1) ** 0.5

        if noise is not None:
            def step(self, model_output, timestep, sample, *args, **kwargs):
                i = self.step_index if self.step_index is not None else 0
                kwargs["variance_noise"] = noise(self.sigmas[i], self.sigmas[i + 1])
                return super().step(model_output, timestep, sample, *args, **kwargs)

    Comfy.__name__ = base.__name__
    return Comfy


def _scheduler(tiny: fx.Tiny, name: str, **kwargs):
    import diffusers

    base = getattr(diffusers, name)
    config = dict(tiny.components["scheduler"].config)
    options = {k: kwargs.pop(k) for k in ("sigmas", "comfy_start", "noise") if k in kwargs}
    return _comfy_class(base, **options).from_config(config, **kwargs)


def _brownian_noise(sigmas: torch.Tensor, shape, seed: int):
    """ComfyUI's SDE step noise, built directly with torchsde: W(σ_next) - W(σ) / √|Δσ|."""
    import torchsde

    positive = sigmas[sigmas > 0]
    tree = torchsde.BrownianTree(positive.min(), torch.zeros(shape), sigmas.max(), entropy=seed)

    def noise(sigma, sigma_next):
        lo, hi = sorted([float(sigma), float(sigma_next)])
        sign = 1.0 if float(sigma) < float(sigma_next) else -1.0
        w = tree(torch.tensor(lo), torch.tensor(hi)) * sign
        return w / (sigma_next - sigma).abs().sqrt()

    return noise


def _ksample(tmp_path, model, positive, negative, latent, *, sampler="euler", scheduler="normal", steps=4, cfg=7.5,
             denoise=1.0, seed=SEED):
    return KSampler().execute(fx.make_ctx(tmp_path), model=model, seed=seed, steps=steps, cfg=cfg,
                              sampler_name=sampler, scheduler=scheduler, positive=positive, negative=negative,
                              latent_image=latent, denoise=denoise)[0]


def _latents_and_generator(shape, seed: int = SEED):
    """ComfyUI's noise for a pipeline: the first noise from a CPU generator seeded with the seed, the
    ancestral step noise from a fresh one seeded with seed + 1 (ComfyUI's CPU rule)."""
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
    return latents, torch.Generator("cpu").manual_seed(seed + 1)


def _sd_case(name: str, tiny: fx.Tiny):
    """(sampler, scheduler) → (diffusers scheduler set up like ComfyUI, tolerance)."""
    model = tiny.model
    if name == "euler-normal":
        return _scheduler(tiny, "EulerDiscreteScheduler", timestep_spacing="linspace"), EXACT
    if name == "euler_ancestral-simple":
        return _scheduler(tiny, "EulerAncestralDiscreteScheduler", timestep_spacing="trailing"), EXACT
    if name == "euler-karras":
        # ComfyUI's karras sigmas (float32) at the nearest training timesteps
        return _scheduler(tiny, "EulerDiscreteScheduler", sigmas=schedule(model, "euler", "karras", 4)), EXACT
    if name == "heun-normal":
        return _scheduler(tiny, "HeunDiscreteScheduler", timestep_spacing="linspace"), EXACT
    if name == "ddim-ddim_uniform":
        # ComfyUI's ddim is Euler; ddim_uniform starts below σ_max, so the first noise is σ₀·noise
        sig = schedule(model, "ddim", "ddim_uniform", 4)
        return _scheduler(tiny, "EulerDiscreteScheduler", sigmas=sig, comfy_start=False,
                          timestep_spacing="linspace"), EXACT
    if name == "dpmpp_2m-karras":
        return _scheduler(tiny, "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2,
                          final_sigmas_type="zero", sigmas=schedule(model, "dpmpp_2m", "karras", 4),
                          comfy_start=False), ROUNDING
    if name == "dpmpp_2m_sde-normal":
        sig = schedule(model, "dpmpp_2m_sde", "normal", 4)
        return _scheduler(tiny, "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_order=2,
                          final_sigmas_type="zero", sigmas=sig, comfy_start=False,
                          noise=_brownian_noise(sig, (1, 4, 8, 8), SEED)), ROUNDING
    if name in ("uni_pc-normal", "uni_pc_bh2-exponential"):
        sampler, sched = name.split("-")
        sig = schedule(model, sampler, sched, 4).clone()
        sig[-1] = 0.001  # ComfyUI's UniPC stops at σ = 0.001 (and order 3)
        return _scheduler(tiny, "UniPCMultistepScheduler", solver_order=3, final_sigmas_type="zero",
                          solver_type="bh1" if sampler == "uni_pc" else "bh2", sigmas=sig,
                          comfy_start=False), ROUNDING
    raise KeyError(name)


SD_CASES = ["euler-normal", "euler_ancestral-simple", "euler-karras", "heun-normal", "ddim-ddim_uniform",
            "dpmpp_2m-karras", "dpmpp_2m_sde-normal", "uni_pc-normal", "uni_pc_bh2-exponential"]


@pytest.mark.parametrize("case", SD_CASES)
def test_sd15_txt2img_matches_pipeline(tmp_path, case):
    tiny = fx.sd15()
    scheduler, tol = _sd_case(case, tiny)
    sampler, sched = case.split("-")
    pipe = _sd_pipe(tiny, scheduler=scheduler)
    pos, neg = _encode(tmp_path, tiny, "a photo of a cat"), _encode(tmp_path, tiny, "blurry, low quality")
    latent = EmptyLatentImage().execute(fx.make_ctx(tmp_path), width=64, height=64, batch_size=1)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, sampler=sampler, scheduler=sched)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    latents, generator = _latents_and_generator((1, 4, 8, 8))
    ref = pipe(prompt="a photo of a cat", negative_prompt="blurry, low quality", num_inference_steps=4,
               guidance_scale=7.5, latents=latents, generator=generator, output_type="pt", height=64,
               width=64).images
    assert _max_diff(image, ref) <= tol
    assert image.std() > 0.01  # a real image, not a constant


def test_sd15_cfg_one_skips_uncond_like_pipeline(tmp_path):
    """cfg == 1: diffusers runs the positive prompt only; so does KSampler (as ComfyUI does)."""
    tiny = fx.sd15()
    pipe = _sd_pipe(tiny, scheduler=_scheduler(tiny, "EulerDiscreteScheduler", timestep_spacing="linspace"))
    pos = _encode(tmp_path, tiny, "a red car")
    neg = [CondEntry(pos[0].embeds + 5.0, pos[0].options)]  # would change the result if it were used
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, cfg=1.0)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    latents, generator = _latents_and_generator((1, 4, 8, 8))
    ref = pipe(prompt="a red car", num_inference_steps=4, guidance_scale=1.0, latents=latents, generator=generator,
               output_type="pt", height=64, width=64).images
    assert _max_diff(image, ref) == EXACT


def test_sd15_batch_of_two_matches_pipeline(tmp_path):
    """One noise draw for the whole batch (initial and per step), as ComfyUI and diffusers both do."""
    tiny = fx.sd15()
    pipe = _sd_pipe(tiny, scheduler=_scheduler(tiny, "EulerAncestralDiscreteScheduler",
                                               timestep_spacing="linspace"))
    pos, neg = _encode(tmp_path, tiny, "a dog"), _encode(tmp_path, tiny, "ugly")
    latent = EmptyLatentImage().execute(fx.make_ctx(tmp_path), width=64, height=64, batch_size=2)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, sampler="euler_ancestral")
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    latents, generator = _latents_and_generator((2, 4, 8, 8))
    ref = pipe(prompt="a dog", negative_prompt="ugly", num_inference_steps=4, guidance_scale=7.5,
               num_images_per_prompt=2, latents=latents, generator=generator, output_type="pt",
               height=64, width=64).images
    assert _max_diff(image, ref) == EXACT
    assert (image[0] - image[1]).abs().max() > 1e-3  # two different images from one seed


def test_sdxl_txt2img_matches_pipeline(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    tiny = fx.sdxl()
    c = dict(tiny.components)
    c["scheduler"] = _scheduler(tiny, "EulerDiscreteScheduler", timestep_spacing="linspace")
    pipe = StableDiffusionXLPipeline(**c)
    pos, neg = _encode(tmp_path, tiny, "a castle on a hill"), _encode(tmp_path, tiny, "blurry")
    latent = EmptyLatentImage().execute(fx.make_ctx(tmp_path), width=64, height=64, batch_size=1)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, cfg=5.0)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    latents, generator = _latents_and_generator((1, 4, 8, 8))
    ref = pipe(prompt="a castle on a hill", negative_prompt="blurry", num_inference_steps=4, guidance_scale=5.0,
               latents=latents, generator=generator, output_type="pt", height=64, width=64).images
    assert _max_diff(image, ref) == EXACT


@pytest.mark.parametrize("dev", [True, False], ids=["dev-guidance", "schnell"])
def test_flux_txt2img_matches_pipeline(tmp_path, dev):
    """FluxPipeline shifts FLUX.1-dev's schedule for the image size; in ComfyUI that is the
    ModelSamplingFlux node (without it, FLUX.1-dev uses μ = 1.15, the 1024×1024 value).  Schnell is
    unshifted in both."""
    from diffusers import FluxPipeline

    tiny = fx.flux(dev)
    pipe = FluxPipeline(**tiny.components)
    guidance = 4.0
    model = tiny.model
    if dev:
        model = ModelSamplingFlux().execute(fx.make_ctx(tmp_path), model=model, max_shift=1.15, base_shift=0.5,
                                            width=64, height=64)[0]
    positive = FluxGuidance().execute(fx.make_ctx(tmp_path), conditioning=_encode(tmp_path, tiny, "a bowl of fruit"),
                                      guidance=guidance)[0]
    negative = _encode(tmp_path, tiny, "")  # ignored at cfg 1, as in ComfyUI's FLUX workflows
    latent = EmptySD3LatentImage().execute(fx.make_ctx(tmp_path), width=64, height=64, batch_size=1)[0]
    out = _ksample(tmp_path, model, positive, negative, latent, sampler="euler", scheduler="simple", cfg=1.0)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    ref = pipe(prompt="a bowl of fruit", num_inference_steps=4, guidance_scale=guidance,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", height=64, width=64).images
    assert _max_diff(image, ref) == EXACT
    if dev:  # the guidance value reaches the guidance embedding
        other = _ksample(tmp_path, model, [positive[0].with_options(guidance=1.0)], negative, latent,
                         scheduler="simple", cfg=1.0)
        assert (other["samples"] - out["samples"]).abs().max() > 1e-4


def _source_image(seed: int = 5) -> torch.Tensor:
    g = torch.Generator("cpu").manual_seed(seed)
    base = torch.rand(1, 8, 8, 3, generator=g)
    return torch.nn.functional.interpolate(base.permute(0, 3, 1, 2), size=(64, 64), mode="bilinear").permute(0, 2, 3, 1)


def _img2img_strength(steps: int, denoise: float) -> tuple[int, float]:
    """The diffusers (num_inference_steps, strength) that run ComfyUI's img2img steps: the last
    ``steps`` of ``int(steps/denoise)``.  (Given ``steps`` and ``strength=denoise`` diffusers would run
    ``int(steps·denoise)`` steps of a ``steps``-step schedule — a different picture.)"""
    total = int(steps / denoise)
    return total, (steps + 0.5) / total


def test_sd15_img2img_follows_comfyui_denoise(tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    tiny = fx.sd15()
    pipe = _sd_pipe(tiny, StableDiffusionImg2ImgPipeline,
                    _scheduler(tiny, "EulerDiscreteScheduler", timestep_spacing="linspace"))
    pos, neg = _encode(tmp_path, tiny, "a watercolor house"), _encode(tmp_path, tiny, "dark")
    latent = VAEEncode().execute(fx.make_ctx(tmp_path), pixels=_source_image(), vae=tiny.vae)[0]
    # 5 steps at denoise 0.5: ComfyUI runs the last 5 sigmas of a 10-step schedule (999, 888, … 0)
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, steps=5, denoise=0.5)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    total, strength = _img2img_strength(5, 0.5)
    init = latent["samples"] * tiny.vae.scaling_factor  # already-encoded (scaled) latents as `image`
    ref = pipe(prompt="a watercolor house", negative_prompt="dark", image=init, strength=strength,
               num_inference_steps=total, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="pt").images
    assert _max_diff(image, ref) == EXACT
    # diffusers' own rule (2 steps of a 5-step schedule) gives another picture
    own = pipe(prompt="a watercolor house", negative_prompt="dark", image=init, strength=0.5, num_inference_steps=5,
               guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert _max_diff(image, own) > 1e-3


def test_sd15_inpaint_follows_comfyui_mask(tmp_path):
    """ComfyUI replaces the kept region with the source noised to the current σ before each model call
    (and the denoised estimate's kept region with the source); diffusers' inpaint pipeline replaces it
    after each step with the source noised to the next σ.  With a binary mask and a deterministic
    sampler the model sees the same inputs when the run starts below σ_max (denoise < 1); what differs is
    the rounding of the kept region in the last step (ComfyUI: x + (x - source)/σ·(0 - σ) ≈ source)."""
    from diffusers import StableDiffusionInpaintPipeline

    tiny = fx.sd15()
    assert tiny.components["unet"].config.in_channels == 4
    pipe = _sd_pipe(tiny, StableDiffusionInpaintPipeline,
                    _scheduler(tiny, "EulerDiscreteScheduler", timestep_spacing="linspace"))
    pos, neg = _encode(tmp_path, tiny, "a hat"), _encode(tmp_path, tiny, "blurry")
    latent = VAEEncode().execute(fx.make_ctx(tmp_path), pixels=_source_image(), vae=tiny.vae)[0]
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 8:40] = 1.0  # aligned to the 8-pixel latent grid, so every latent pixel is 0 or 1
    masked = SetLatentNoiseMask().execute(fx.make_ctx(tmp_path), samples=latent, mask=mask)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, masked, steps=5, denoise=0.5)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    total, strength = _img2img_strength(5, 0.5)
    init = latent["samples"] * tiny.vae.scaling_factor
    ref = pipe(prompt="a hat", negative_prompt="blurry", image=init, mask_image=mask[:, None],
               masked_image_latents=init, strength=strength, num_inference_steps=total, guidance_scale=7.5,
               height=64, width=64, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert _max_diff(image, ref) <= ROUNDING
    # outside the mask the latent is the source latent (up to rounding), inside it was repainted
    keep = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    keep[..., 2:6, 1:5] = False
    kept = keep.expand_as(out["samples"])
    assert torch.allclose(out["samples"][kept], latent["samples"][kept], rtol=0, atol=1e-5)
    assert (out["samples"][~kept] - latent["samples"][~kept]).abs().max() > 1e-2


def test_comfy_noise_start_differs_from_diffusers_default(tmp_path):
    """The documented difference is real: diffusers' default Euler start (σ_max·noise) gives another
    picture than ComfyUI's √(1 + σ_max²)·noise, which KSampler reproduces."""
    tiny = fx.sd15()
    import diffusers

    plain = diffusers.EulerDiscreteScheduler.from_config(dict(tiny.components["scheduler"].config),
                                                         timestep_spacing="linspace")
    pipe = _sd_pipe(tiny, scheduler=plain)
    pos, neg = _encode(tmp_path, tiny, "a photo of a cat"), _encode(tmp_path, tiny, "blurry, low quality")
    out = _ksample(tmp_path, tiny.model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)})
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    ref = pipe(prompt="a photo of a cat", negative_prompt="blurry, low quality", num_inference_steps=4,
               guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", height=64,
               width=64).images
    sigma_max = float(schedule(tiny.model, "euler", "normal", 4)[0])
    assert math.sqrt(1 + sigma_max ** 2) / sigma_max > 1.002
    assert _max_diff(image, ref) > 1e-4
    assert np.isfinite(_max_diff(image, ref))
