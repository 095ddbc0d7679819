"""ControlNet node chain vs diffusers' ControlNet pipelines: same tiny models, seed and settings → same image.

Our side: ControlNetLoader (from the tiny files, through the real layout conversion) →
ControlNetApplyAdvanced / ControlNetApplySD3 → KSampler → VAEDecode.  Their side:
``StableDiffusionControlNetPipeline``, ``StableDiffusionXLControlNetPipeline`` and
``FluxControlNetPipeline`` with the very module the loader built and an independently configured
scheduler set up the way ComfyUI samples (see ``test_parity.py``: the start noise ComfyUI uses, 4 steps so
the "normal"/"simple" timesteps are whole training timesteps in both, and FLUX.1-dev shifted for the image
size by a ModelSamplingFlux node, which is what FluxPipeline's shift is).  Required bound 1e-4; we
assert the tightest that holds, **exact equality**: the hook
calls the ControlNet on the same batched ``[uncond, cond]`` rows with ``conditioning_scale``
exactly as the pipelines do, so both sides run the same kernels on the same values.

The pipelines get the control picture as a PIL image, the way users call them (given a tensor,
FluxControlNetPipeline skips its [0, 1] → [-1, 1] normalisation).  One deliberate difference is
neutralised: for InstantX-style FLUX ControlNets the pipeline encodes
the control image by *sampling* the VAE posterior with the pipeline's generator, while ComfyUI and
we take its mode (deterministic, no seed involved).  The test makes the pipeline's VAE return the
mode, so what is compared is the ControlNet path itself.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_runtime.context import NodeContext, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from nodes.conditioning import CLIPTextEncode, FluxGuidance
from nodes.controlnet import ControlNetApplyAdvanced, ControlNetApplySD3, ControlNetLoader
from nodes.latent import EmptyLatentImage, EmptySD3LatentImage, VAEDecode
from nodes.sampling import KSampler
from tests import sampling_fixtures as fx

TOL = 0.0  # bit-exact (required: <= 1e-4), see the module docstring
SEED = 77
STEPS = 4


def control_picture(size: int = 64):
    """skimage's astronaut as a PIL picture — a real photo with edges and a face."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC)


def control_image(size: int = 64) -> torch.Tensor:
    """The same picture as an IMAGE (1, size, size, 3), the way LoadImage makes one (uint8 / 255)."""
    return torch.from_numpy(np.asarray(control_picture(size), dtype=np.float32) / 255.0)[None]


def _ctx(paths: FolderPaths, class_type: str = "X") -> NodeContext:
    return NodeContext(node_id="1", class_type=class_type, prompt_id="p", paths=paths, models=ModelManager(),
                       options=RuntimeOptions(device="cpu", dtype="fp32"))


def _encode(paths, tiny: fx.Tiny, text: str):
    return CLIPTextEncode().execute(_ctx(paths), text=text, clip=tiny.clip)[0]


def _sample(paths, tiny, pos, neg, latent, *, cfg, scheduler="normal", steps=STEPS):
    out = KSampler().execute(_ctx(paths, "KSampler"), model=_comfy_model(paths, tiny.model), seed=SEED, steps=steps,
                             cfg=cfg,
                             sampler_name="euler", scheduler=scheduler, positive=pos, negative=neg,
                             latent_image=latent, denoise=1.0)[0]
    return VAEDecode().execute(_ctx(paths), samples=out, vae=tiny.vae)[0]


def _comfy_model(paths, model):
    """FLUX.1-dev shifted for a 64×64 image (FluxPipeline's shift); other models as they are."""
    from nodes.sampling import ModelSamplingFlux

    if model.family.value != "flux_dev":
        return model
    return ModelSamplingFlux().execute(_ctx(paths), model=model, max_shift=1.15, base_shift=0.5, width=64,
                                       height=64)[0]


def _euler(tiny: fx.Tiny):
    """Euler starting at ComfyUI's √(1 + σ_max²)·noise (diffusers' linspace default: σ_max·noise)."""
    from diffusers import EulerDiscreteScheduler

    class ComfyStart(EulerDiscreteScheduler):
        @property
        def init_noise_sigma(self):
            return (self.sigmas.max() ** 2 + 1) ** 0.5

    return ComfyStart.from_config(dict(tiny.components["scheduler"].config), timestep_spacing="linspace")


def _diff(image: torch.Tensor, ref: torch.Tensor) -> float:
    assert image.shape == ref.permute(0, 2, 3, 1).shape
    return (image - ref.permute(0, 2, 3, 1)).abs().max().item()


def test_sd15_controlnet_matches_pipeline(tiny_paths):
    from diffusers import StableDiffusionControlNetPipeline

    tiny = fx.sd15()
    cn = ControlNetLoader().execute(_ctx(tiny_paths), control_net_name="tiny-sd15-controlnet.safetensors")[0]
    image = control_image()
    pos, neg = _encode(tiny_paths, tiny, "an astronaut"), _encode(tiny_paths, tiny, "blurry")
    pos, neg = ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                                 image=image, strength=0.8, start_percent=0.0, end_percent=1.0)
    latent = EmptyLatentImage().execute(_ctx(tiny_paths), width=64, height=64, batch_size=1)[0]
    ours = _sample(tiny_paths, tiny, pos, neg, latent, cfg=6.0)
    c = tiny.components
    pipe = StableDiffusionControlNetPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                             unet=c["unet"], controlnet=cn.module, scheduler=_euler(tiny),
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    ref = pipe(prompt="an astronaut", negative_prompt="blurry", image=control_picture(),
               controlnet_conditioning_scale=0.8, num_inference_steps=STEPS, guidance_scale=6.0, height=64, width=64,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert _diff(ours, ref) <= TOL
    # the ControlNet does act: without it the pipeline's UNet alone gives another image
    plain = _sample(tiny_paths, tiny, _encode(tiny_paths, tiny, "an astronaut"), _encode(tiny_paths, tiny, "blurry"),
                    latent, cfg=6.0)
    assert (plain - ours).abs().max() > 1e-3


def test_sdxl_controlnet_matches_pipeline(tiny_paths):
    from diffusers import StableDiffusionXLControlNetPipeline

    tiny = fx.sdxl()
    cn = ControlNetLoader().execute(_ctx(tiny_paths), control_net_name="tiny-sdxl-controlnet.safetensors")[0]
    image = control_image()
    pos, neg = _encode(tiny_paths, tiny, "a castle"), _encode(tiny_paths, tiny, "fog")
    pos, neg = ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                                 image=image, strength=1.0, start_percent=0.0, end_percent=1.0)
    latent = EmptyLatentImage().execute(_ctx(tiny_paths), width=64, height=64, batch_size=1)[0]
    ours = _sample(tiny_paths, tiny, pos, neg, latent, cfg=5.0)
    c = dict(tiny.components)
    c["scheduler"] = _euler(tiny)
    pipe = StableDiffusionXLControlNetPipeline(**c, controlnet=cn.module)
    ref = pipe(prompt="a castle", negative_prompt="fog", image=control_picture(), num_inference_steps=STEPS,
               guidance_scale=5.0, height=64, width=64, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="pt").images
    assert _diff(ours, ref) <= TOL


class _ModeLatents:
    """Wraps a VAE so ``encode(x).latent_dist.sample(generator)`` returns the posterior mode."""

    def __init__(self, vae) -> None:
        self._vae = vae

    def __getattr__(self, name):
        return getattr(self._vae, name)

    def encode(self, x, *args, **kwargs):
        out = self._vae.encode(x, *args, **kwargs)
        dist = out.latent_dist
        dist.sample = lambda generator=None: dist.mode()
        return out


@pytest.mark.parametrize("name,node", [("tiny-flux-controlnet.safetensors", "SD3"),
                                       ("tiny-flux-controlnet-xlabs.safetensors", "advanced")],
                         ids=["instantx-vae-hint", "xlabs-pixel-hint"])
def test_flux_controlnet_matches_pipeline(tiny_paths, name, node):
    from diffusers import FluxControlNetPipeline

    tiny = fx.flux(True)
    cn = ControlNetLoader().execute(_ctx(tiny_paths), control_net_name=name)[0]
    image = control_image()
    guidance = 3.5
    pos = FluxGuidance().execute(_ctx(tiny_paths), conditioning=_encode(tiny_paths, tiny, "an astronaut"),
                                 guidance=guidance)[0]
    neg = _encode(tiny_paths, tiny, "")
    if node == "SD3":
        pos, neg = ControlNetApplySD3().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                                vae=tiny.vae, image=image, strength=0.7, start_percent=0.0,
                                                end_percent=1.0)
    else:
        pos, neg = ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                                     image=image, strength=0.7, start_percent=0.0, end_percent=1.0)
    latent = EmptySD3LatentImage().execute(_ctx(tiny_paths), width=64, height=64, batch_size=1)[0]
    ours = _sample(tiny_paths, tiny, pos, neg, latent, cfg=1.0, scheduler="simple")
    c = dict(tiny.components)
    pipe = FluxControlNetPipeline(**c, controlnet=cn.module)
    pipe.vae = _ModeLatents(c["vae"])
    ref = pipe(prompt="an astronaut", control_image=control_picture(), controlnet_conditioning_scale=0.7,
               num_inference_steps=STEPS, guidance_scale=guidance, height=64, width=64,
               generator=torch.Generator("cpu").manual_seed(SEED), output_type="pt").images
    assert _diff(ours, ref) <= TOL
    plain = _sample(tiny_paths, tiny, FluxGuidance().execute(_ctx(tiny_paths), conditioning=_encode(
        tiny_paths, tiny, "an astronaut"), guidance=guidance)[0], neg, latent, cfg=1.0, scheduler="simple")
    assert (plain - ours).abs().max() > 1e-3


def test_flux_canny_model_with_instruct_pix_to_pix_matches_pipeline(tiny_paths):
    """FLUX.1-Canny-dev-shaped model: the control image's latent rides along as extra input channels."""
    from diffusers import FluxControlPipeline

    from nodes.controlnet import InstructPixToPixConditioning
    from nodes.loaders import UNETLoader

    tiny = fx.flux(True)
    model = UNETLoader().execute(_ctx(tiny_paths), unet_name="tiny-flux-canny-dev.safetensors")[0]
    assert model.denoiser.config.in_channels == 2 * model.denoiser.config.out_channels
    guidance = 30.0
    pos = FluxGuidance().execute(_ctx(tiny_paths), conditioning=_encode(tiny_paths, tiny, "an astronaut"),
                                 guidance=guidance)[0]
    neg = _encode(tiny_paths, tiny, "")
    pos, neg, latent = InstructPixToPixConditioning().execute(_ctx(tiny_paths), positive=pos, negative=neg,
                                                              vae=tiny.vae, pixels=control_image())
    out = KSampler().execute(_ctx(tiny_paths, "KSampler"), model=_comfy_model(tiny_paths, model), seed=SEED,
                             steps=STEPS, cfg=1.0,
                             sampler_name="euler", scheduler="simple", positive=pos, negative=neg,
                             latent_image=latent, denoise=1.0)[0]
    ours = VAEDecode().execute(_ctx(tiny_paths), samples=out, vae=tiny.vae)[0]
    c = dict(tiny.components)
    c["transformer"] = model.denoiser
    pipe = FluxControlPipeline(**c)
    pipe.vae = _ModeLatents(c["vae"])
    ref = pipe(prompt="an astronaut", control_image=control_picture(), num_inference_steps=STEPS,
               guidance_scale=guidance, height=64, width=64, generator=torch.Generator("cpu").manual_seed(SEED),
               output_type="pt").images
    assert _diff(ours, ref) <= TOL
    # the control channels matter: another control image gives another picture
    pos2, neg2, _ = InstructPixToPixConditioning().execute(_ctx(tiny_paths), positive=pos, negative=neg,
                                                           vae=tiny.vae, pixels=control_image().flip(2))
    other = KSampler().execute(_ctx(tiny_paths, "KSampler"), model=_comfy_model(tiny_paths, model), seed=SEED,
                               steps=STEPS, cfg=1.0,
                               sampler_name="euler", scheduler="simple", positive=pos2, negative=neg2,
                               latent_image=latent, denoise=1.0)[0]
    assert (other["samples"] - out["samples"]).abs().max() > 1e-4
