"""Node chain vs diffusers pipeline: same tiny model, seed, steps, sampler and guidance → same image.

Each test runs encode → KSampler → VAEDecode through the node classes' ``execute`` and the matching
diffusers pipeline with an independently configured scheduler, on CPU in float32.  The required
bound is 1e-4; we assert the tightest one that holds, **exact equality** (max abs difference 0.0):
the node loop makes the same batched ``[uncond, cond]`` UNet call, shares one CPU generator between
the initial noise and ``scheduler.step``, and keeps latents contiguous (a channels-last latent
would pick other convolution kernels and drift by ~1e-6), so both sides execute the same kernels
on the same values.  Prompts go through the CLIPTextEncode / FluxGuidance nodes on our side and
through the pipeline's own text encoding on the other, so the whole chain text → image is compared.
"""
from __future__ import annotations

import pytest
import torch

from nodes.conditioning import CLIPTextEncode, FluxGuidance
from nodes.diffusion.types import CondEntry
from nodes.latent import EmptyLatentImage, EmptySD3LatentImage, SetLatentNoiseMask, VAEDecode, VAEEncode
from nodes.sampling import KSampler
from tests import sampling_fixtures as fx

TOL = 0.0  # see the module docstring: the chains are bit-exact (required: <= 1e-4)
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


def _pipe_scheduler(name: str, base_config: dict, **kwargs):
    import diffusers

    return getattr(diffusers, name).from_config(base_config, **kwargs)


# (ComfyUI sampler, scheduler) → the diffusers scheduler a user would configure for it by hand
SD_CASES = [
    ("euler", "normal", "EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("euler_ancestral", "simple", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("euler", "karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "linspace"}),
    ("lms", "beta", "LMSDiscreteScheduler", {"use_beta_sigmas": True, "timestep_spacing": "linspace"}),
    ("dpmpp_2m", "karras", "DPMSolverMultistepScheduler",
     {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True, "solver_order": 2}),
    ("dpmpp_2m_sde", "normal", "DPMSolverMultistepScheduler",
     {"algorithm_type": "sde-dpmsolver++", "timestep_spacing": "linspace"}),
    ("ddim", "ddim_uniform", "DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1}),
    ("heun", "normal", "HeunDiscreteScheduler", {"timestep_spacing": "linspace"}),
    # uni_pc (B(h) = h) is not compared: diffusers' own bh1 returns NaN at the last step (see test_sampler_table)
    ("uni_pc_bh2", "exponential", "UniPCMultistepScheduler", {"use_exponential_sigmas": True, "solver_type": "bh2"}),
    ("uni_pc_bh2", "normal", "UniPCMultistepScheduler", {"solver_type": "bh2", "timestep_spacing": "linspace"}),
]


def _ksample(tmp_path, model, positive, negative, latent, *, sampler="euler", scheduler="normal", steps=4, cfg=7.5,
             denoise=1.0, seed=SEED):
    return KSampler().execute(fx.make_ctx(tmp_path), model=model, seed=seed, steps=steps, cfg=cfg,
                              sampler_name=sampler, scheduler=scheduler, positive=positive, negative=negative,
                              latent_image=latent, denoise=denoise)[0]


@pytest.mark.parametrize("sampler,scheduler,pipe_cls,pipe_kwargs", SD_CASES, ids=[f"{a}-{b}" for a, b, *_ in SD_CASES])
def test_sd15_txt2img_matches_pipeline(tmp_path, sampler, scheduler, pipe_cls, pipe_kwargs):
    tiny = fx.sd15()
    base = dict(tiny.components["scheduler"].config)
    pipe = _sd_pipe(tiny, scheduler=_pipe_scheduler(pipe_cls, base, **pipe_kwargs))
    pos, neg = _encode(tmp_path, tiny, "a photo of a cat"), _encode(tmp_path, tiny, "blurry, low quality")
    latent = EmptyLatentImage().execute(fx.make_ctx(tmp_path), width=64, height=64, batch_size=1)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, sampler=sampler, scheduler=scheduler)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    ref = pipe(prompt="a photo of a cat", negative_prompt="blurry, low quality", num_inference_steps=4,
               guidance_scale=7.5,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", height=64, width=64).images
    assert _max_diff(image, ref) <= TOL
    assert image.std() > 0.01  # a real image, not a constant


def test_sd15_cfg_one_skips_uncond_like_pipeline(tmp_path):
    """cfg == 1: diffusers runs the positive prompt only; so does KSampler."""
    tiny = fx.sd15()
    pipe = _sd_pipe(tiny, scheduler=_pipe_scheduler("EulerDiscreteScheduler", dict(tiny.components["scheduler"].config),
                                                    timestep_spacing="linspace"))
    pos = _encode(tmp_path, tiny, "a red car")
    neg = [CondEntry(pos[0].embeds + 5.0, pos[0].options)]  # would change the result if it were used
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, cfg=1.0)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    ref = pipe(prompt="a red car", num_inference_steps=4, guidance_scale=1.0,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", height=64, width=64).images
    assert _max_diff(image, ref) <= TOL


def test_sd15_batch_of_two_matches_pipeline(tmp_path):
    tiny = fx.sd15()
    pipe = _sd_pipe(tiny, scheduler=_pipe_scheduler("EulerAncestralDiscreteScheduler",
                                                    dict(tiny.components["scheduler"].config),
                                                    timestep_spacing="linspace"))
    pos, neg = _encode(tmp_path, tiny, "a dog"), _encode(tmp_path, tiny, "ugly")
    latent = EmptyLatentImage().execute(fx.make_ctx(tmp_path), width=64, height=64, batch_size=2)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, sampler="euler_ancestral")
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    ref = pipe(prompt="a dog", negative_prompt="ugly", num_inference_steps=4, guidance_scale=7.5,
               num_images_per_prompt=2, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt",
               height=64, width=64).images
    assert _max_diff(image, ref) <= TOL
    assert (image[0] - image[1]).abs().max() > 1e-3  # two different images from one seed


def test_sdxl_txt2img_matches_pipeline(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    tiny = fx.sdxl()
    c = dict(tiny.components)
    c["scheduler"] = _pipe_scheduler("EulerDiscreteScheduler", dict(c["scheduler"].config), timestep_spacing="linspace")
    pipe = StableDiffusionXLPipeline(**c)
    pos, neg = _encode(tmp_path, tiny, "a castle on a hill"), _encode(tmp_path, tiny, "blurry")
    latent = EmptyLatentImage().execute(fx.make_ctx(tmp_path), width=64, height=64, batch_size=1)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, cfg=5.0)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    ref = pipe(prompt="a castle on a hill", negative_prompt="blurry", num_inference_steps=4, guidance_scale=5.0,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", height=64, width=64).images
    assert _max_diff(image, ref) <= TOL


@pytest.mark.parametrize("dev", [True, False], ids=["dev-guidance", "schnell"])
def test_flux_txt2img_matches_pipeline(tmp_path, dev):
    from diffusers import FluxPipeline

    tiny = fx.flux(dev)
    pipe = FluxPipeline(**tiny.components)
    guidance = 4.0
    positive = FluxGuidance().execute(fx.make_ctx(tmp_path), conditioning=_encode(tmp_path, tiny, "a bowl of fruit"),
                                      guidance=guidance)[0]
    negative = _encode(tmp_path, tiny, "")  # ignored at cfg 1, as in ComfyUI's FLUX workflows
    latent = EmptySD3LatentImage().execute(fx.make_ctx(tmp_path), width=64, height=64, batch_size=1)[0]
    out = _ksample(tmp_path, tiny.model, positive, negative, latent, sampler="euler", scheduler="simple", cfg=1.0)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    ref = pipe(prompt="a bowl of fruit", num_inference_steps=4, guidance_scale=guidance,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt", height=64, width=64).images
    assert _max_diff(image, ref) <= TOL
    if dev:  # the guidance value reaches the guidance embedding
        other = _ksample(tmp_path, tiny.model, [positive[0].with_options(guidance=1.0)], negative, latent,
                         scheduler="simple", cfg=1.0)
        assert (other["samples"] - out["samples"]).abs().max() > 1e-4


def _source_image(seed: int = 5) -> torch.Tensor:
    g = torch.Generator("cpu").manual_seed(seed)
    base = torch.rand(1, 8, 8, 3, generator=g)
    return torch.nn.functional.interpolate(base.permute(0, 3, 1, 2), size=(64, 64), mode="bilinear").permute(0, 2, 3, 1)


def test_sd15_img2img_matches_pipeline(tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    tiny = fx.sd15()
    sched = _pipe_scheduler("EulerDiscreteScheduler", dict(tiny.components["scheduler"].config),
                            timestep_spacing="linspace")
    pipe = _sd_pipe(tiny, StableDiffusionImg2ImgPipeline, sched)
    pos, neg = _encode(tmp_path, tiny, "a watercolor house"), _encode(tmp_path, tiny, "dark")
    latent = VAEEncode().execute(fx.make_ctx(tmp_path), pixels=_source_image(), vae=tiny.vae)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, latent, steps=5, denoise=0.6)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    # the pipeline takes already-encoded (scaled) latents as `image`, so both sides start from the same latent
    init = latent["samples"] * tiny.vae.scaling_factor
    ref = pipe(prompt="a watercolor house", negative_prompt="dark", image=init, strength=0.6, num_inference_steps=5,
               guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert _max_diff(image, ref) <= TOL


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_sd15_inpaint_matches_pipeline(tmp_path, strength):
    from diffusers import StableDiffusionInpaintPipeline

    tiny = fx.sd15()
    assert tiny.components["unet"].config.in_channels == 4
    sched = _pipe_scheduler("EulerAncestralDiscreteScheduler", dict(tiny.components["scheduler"].config),
                            timestep_spacing="linspace")
    pipe = _sd_pipe(tiny, StableDiffusionInpaintPipeline, sched)
    pos, neg = _encode(tmp_path, tiny, "a hat"), _encode(tmp_path, tiny, "blurry")
    latent = VAEEncode().execute(fx.make_ctx(tmp_path), pixels=_source_image(), vae=tiny.vae)[0]
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 8:40] = 1.0  # aligned to the 8-pixel latent grid, so nearest and bilinear agree
    masked = SetLatentNoiseMask().execute(fx.make_ctx(tmp_path), samples=latent, mask=mask)[0]
    out = _ksample(tmp_path, tiny.model, pos, neg, masked, sampler="euler_ancestral", denoise=strength)
    image = VAEDecode().execute(fx.make_ctx(tmp_path), samples=out, vae=tiny.vae)[0]
    init = latent["samples"] * tiny.vae.scaling_factor
    ref = pipe(prompt="a hat", negative_prompt="blurry", image=init, mask_image=mask[:, None],
               masked_image_latents=init, strength=strength, num_inference_steps=4, guidance_scale=7.5,
               height=64, width=64, generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert _max_diff(image, ref) <= TOL
    # outside the mask the latent is the source latent (up to the ×scale ÷scale round trip)
    keep = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    keep[..., 2:6, 1:5] = False
    kept_out = out["samples"][keep.expand_as(out["samples"])]
    kept_src = latent["samples"][keep.expand_as(latent["samples"])]
    assert torch.allclose(kept_out, kept_src, rtol=0, atol=1e-6)
    inside = ~keep.expand_as(out["samples"])
    assert (out["samples"][inside] - latent["samples"][inside]).abs().max() > 1e-2
