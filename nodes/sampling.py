"""Sampling nodes: KSampler, KSamplerAdvanced, the custom-sampling family, model sampling patches.

The loop itself lives in :mod:`nodes.diffusion.sampling`; these nodes only translate ComfyUI's
inputs into a :class:`~nodes.diffusion.sampling.SamplingRequest`.

**Seed → noise.**  Noise is drawn on the CPU from ``torch.Generator("cpu").manual_seed(seed)`` with
diffusers' ``randn_tensor`` over the latent's shape, and the same generator feeds the ancestral/SDE
steps — the diffusers pipelines' recipe, so a seed reproduces the pipeline's image exactly and is
device-independent.  ComfyUI draws noise differently, so the same seed gives a different image than
ComfyUI does.  ``denoise`` < 1 follows diffusers' ``strength`` rule (the last ``int(steps·denoise)``
of ``steps`` timesteps run).

Sampler/scheduler pairs come from the table in :mod:`nodes.diffusion.schedulers`; a pair without a
diffusers equivalent is refused when the prompt is queued (``validate_inputs``) — or, when it only
fails for the connected model's kind (e.g. ``euler_ancestral`` on FLUX), when the node starts.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import (MAX_RESOLUTION, Boolean, CachePolicy, Combo, Float, Int, Node, NodeResult, Output,
                                  Resource, Seed, Socket)
from nodes.diffusion.schedulers import (SAMPLER_NAMES, SCHEDULER_NAMES, check_combination, check_sampler,
                                        model_kind)

if TYPE_CHECKING:  # torch and the sampling loop load on first use: registering nodes stays light
    from nodes.diffusion import sampling as S
    from nodes.diffusion.types import DiffusionModel

_CFG = dict(min=0.0, max=100.0, step=0.1, round=0.01)


def _run(ctx: NodeContext, req: S.SamplingRequest) -> S.SamplingResult:
    from nodes.diffusion import sampling as S
    from nodes.diffusion.loading import resolve_device, resolve_dtype

    # the loaders' device/dtype rules, so a model samples where and how it was loaded
    device = resolve_device(ctx.options.device)
    dtype = resolve_dtype(ctx.options.dtype, device, req.model.family)
    kind = model_kind(req.model.prediction_type)
    if req.custom_sigmas is None:
        msg = check_combination(req.sampler, req.scheduler or "simple", kind)
        if msg:
            raise NodeError(msg, input_name="scheduler" if "scheduler '" in msg else "sampler_name")
    ctx.record(device=str(device), dtype=str(dtype).replace("torch.", ""), sampler=req.sampler,
               scheduler=req.scheduler or "custom sigmas")
    run = S.RunOptions(device=device, dtype=dtype, progress=ctx.progress, check_interrupted=ctx.check_interrupted,
                       previews=getattr(ctx.options, "preview_method", "auto") != "none")
    try:
        return S.sample(req, run)
    except ValueError as exc:
        raise NodeError(str(exc)) from exc


def _validate_pair(sampler_name: Any, scheduler: Any) -> bool | str:
    if sampler_name is None or scheduler is None:  # linked: checked when the node runs
        return True
    return check_combination(str(sampler_name), str(scheduler)) or True


class KSampler(Node):
    """Uses the provided model, positive and negative conditioning to denoise the latent image.

    Seeds: noise comes from ``torch.Generator("cpu").manual_seed(seed)`` and ``randn_tensor`` (the
    diffusers pipelines' recipe), not ComfyUI's — same seed, same image as the diffusers pipeline.
    """

    CATEGORY = "sampling"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (
        Socket("model", "MODEL", tooltip="The model used for denoising the input latent."),
        Seed("seed"),
        Int("steps", 20, min=1, max=10000, tooltip="The number of steps used in the denoising process."),
        Float("cfg", 8.0, **_CFG, tooltip="The Classifier-Free Guidance scale."),
        Combo("sampler_name", SAMPLER_NAMES, tooltip="The algorithm used when sampling."),
        Combo("scheduler", SCHEDULER_NAMES, tooltip="How noise levels are spaced over the steps."),
        Socket("positive", "CONDITIONING"),
        Socket("negative", "CONDITIONING"),
        Socket("latent_image", "LATENT", tooltip="The latent image to denoise."),
        Float("denoise", 1.0, min=0.0, max=1.0, step=0.01,
              tooltip="Lower values keep more of the input latent (img2img strength)."),
    )
    OUTPUTS = (Output("LATENT", tooltip="The denoised latent."),)

    @classmethod
    def validate_inputs(cls, sampler_name=None, scheduler=None):
        return _validate_pair(sampler_name, scheduler)

    def execute(self, ctx: NodeContext, model: DiffusionModel, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, positive: list, negative: list, latent_image: dict, denoise: float = 1.0):
        from nodes.diffusion import sampling as S

        if denoise <= 0.0:
            return (latent_image,)
        req = S.SamplingRequest(model=model, positive=positive, negative=negative, latent=latent_image,
                                sampler=sampler_name, scheduler=scheduler, steps=steps, cfg=cfg, seed=seed,
                                denoise=denoise)
        return (_run(ctx, req).latent,)


class KSamplerAdvanced(Node):
    """KSampler with a step window: run steps [start_at_step, end_at_step) of a ``steps`` schedule,
    optionally without adding noise and/or handing on the leftover noise (two-stage workflows)."""

    CATEGORY = "sampling"
    DISPLAY_NAME = "KSampler (Advanced)"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (
        Socket("model", "MODEL"),
        Combo("add_noise", ("enable", "disable")),
        Seed("noise_seed"),
        Int("steps", 20, min=1, max=10000),
        Float("cfg", 8.0, **_CFG),
        Combo("sampler_name", SAMPLER_NAMES),
        Combo("scheduler", SCHEDULER_NAMES),
        Socket("positive", "CONDITIONING"),
        Socket("negative", "CONDITIONING"),
        Socket("latent_image", "LATENT"),
        Int("start_at_step", 0, min=0, max=10000),
        Int("end_at_step", 10000, min=0, max=10000),
        Combo("return_with_leftover_noise", ("disable", "enable")),
    )
    OUTPUTS = (Output("LATENT"),)

    @classmethod
    def validate_inputs(cls, sampler_name=None, scheduler=None):
        return _validate_pair(sampler_name, scheduler)

    def execute(self, ctx: NodeContext, model: DiffusionModel, add_noise: str, noise_seed: int, steps: int,
                cfg: float, sampler_name: str, scheduler: str, positive: list, negative: list, latent_image: dict,
                start_at_step: int, end_at_step: int, return_with_leftover_noise: str):
        from nodes.diffusion import sampling as S

        req = S.SamplingRequest(model=model, positive=positive, negative=negative, latent=latent_image,
                                sampler=sampler_name, scheduler=scheduler, steps=steps, cfg=cfg, seed=noise_seed,
                                add_noise=add_noise == "enable", start_step=start_at_step, end_step=end_at_step,
                                return_with_leftover_noise=return_with_leftover_noise == "enable")
        return (_run(ctx, req).latent,)


# --- custom sampling -----------------------------------------------------------------------------

def _sigmas_request(sigmas: Any) -> dict[str, Any]:
    """SIGMAS → the request fields: a named schedule (exact diffusers schedule) or explicit sigmas."""
    import torch

    from nodes.diffusion import sampling as S

    if isinstance(sigmas, S.Sigmas) and sigmas.scheduler is not None:
        return {"scheduler": sigmas.scheduler, "steps": sigmas.steps, "denoise": sigmas.denoise}
    values = sigmas.values if isinstance(sigmas, S.Sigmas) else torch.as_tensor(sigmas)
    values = [float(v) for v in values.flatten()]
    return {"scheduler": None, "custom_sigmas": values, "steps": max(len([v for v in values if v > 0]), 1)}


def _custom_sample(ctx: NodeContext, *, model: DiffusionModel, positive, negative, cfg: float, sampler: Any,
                   sigmas: Any, latent_image: dict, seed: int, add_noise: bool) -> NodeResult | tuple:
    from nodes.diffusion import sampling as S

    if len(sigmas) <= 1:
        return (latent_image, latent_image)
    name = sampler.name if isinstance(sampler, S.SamplerChoice) else str(sampler)
    req = S.SamplingRequest(model=model, positive=positive, negative=negative, latent=latent_image, sampler=name,
                            cfg=cfg, seed=seed, add_noise=add_noise, **_sigmas_request(sigmas))
    result = _run(ctx, req)
    return (result.latent, result.denoised)


class SamplerCustom(Node):
    """Sample with a separately chosen SAMPLER and SIGMAS schedule; also outputs the final x0 estimate."""

    CATEGORY = "sampling/custom_sampling"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (
        Socket("model", "MODEL"),
        Boolean("add_noise", True),
        Seed("noise_seed"),
        Float("cfg", 8.0, **_CFG),
        Socket("positive", "CONDITIONING"),
        Socket("negative", "CONDITIONING"),
        Socket("sampler", "SAMPLER"),
        Socket("sigmas", "SIGMAS"),
        Socket("latent_image", "LATENT"),
    )
    OUTPUTS = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    def execute(self, ctx: NodeContext, model, add_noise: bool, noise_seed: int, cfg: float, positive, negative,
                sampler, sigmas, latent_image):
        return _custom_sample(ctx, model=model, positive=positive, negative=negative, cfg=cfg, sampler=sampler,
                              sigmas=sigmas, latent_image=latent_image, seed=noise_seed, add_noise=add_noise)


class SamplerCustomAdvanced(Node):
    """Sample with separate NOISE, GUIDER, SAMPLER and SIGMAS inputs."""

    CATEGORY = "sampling/custom_sampling"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (
        Socket("noise", "NOISE"),
        Socket("guider", "GUIDER"),
        Socket("sampler", "SAMPLER"),
        Socket("sigmas", "SIGMAS"),
        Socket("latent_image", "LATENT"),
    )
    OUTPUTS = (Output("LATENT", "output"), Output("LATENT", "denoised_output"))

    def execute(self, ctx: NodeContext, noise: S.NoiseSource, guider: S.Guider, sampler, sigmas, latent_image):
        return _custom_sample(ctx, model=guider.model, positive=list(guider.positive),
                              negative=None if guider.negative is None else list(guider.negative), cfg=guider.cfg,
                              sampler=sampler, sigmas=sigmas, latent_image=latent_image, seed=noise.seed,
                              add_noise=noise.add)


class BasicGuider(Node):
    """Guide with one conditioning and no CFG (what FLUX models use)."""

    CATEGORY = "sampling/custom_sampling/guiders"
    INPUTS = (Socket("model", "MODEL"), Socket("conditioning", "CONDITIONING"))
    OUTPUTS = (Output("GUIDER"),)

    def execute(self, ctx: NodeContext, model, conditioning):
        from nodes.diffusion import sampling as S

        return (S.Guider(model=model, positive=tuple(conditioning), negative=None, cfg=1.0),)


class CFGGuider(Node):
    """Classifier-free guidance between positive and negative conditioning."""

    CATEGORY = "sampling/custom_sampling/guiders"
    INPUTS = (Socket("model", "MODEL"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Float("cfg", 8.0, **_CFG))
    OUTPUTS = (Output("GUIDER"),)

    def execute(self, ctx: NodeContext, model, positive, negative, cfg: float):
        from nodes.diffusion import sampling as S

        return (S.Guider(model=model, positive=tuple(positive), negative=tuple(negative), cfg=cfg),)


class BasicScheduler(Node):
    """The named noise schedule for a model (diffusers computes it exactly as the samplers will use it)."""

    CATEGORY = "sampling/custom_sampling/schedulers"
    INPUTS = (
        Socket("model", "MODEL"),
        Combo("scheduler", SCHEDULER_NAMES),
        Int("steps", 20, min=1, max=10000),
        Float("denoise", 1.0, min=0.0, max=1.0, step=0.01),
    )
    OUTPUTS = (Output("SIGMAS"),)

    @classmethod
    def validate_inputs(cls, scheduler=None):
        if scheduler is None:
            return True
        return check_combination("euler", str(scheduler)) or True

    def execute(self, ctx: NodeContext, model: DiffusionModel, scheduler: str, steps: int, denoise: float):
        import torch

        from nodes.diffusion import sampling as S

        if denoise <= 0.0:
            return (S.Sigmas(torch.zeros(0), scheduler, steps, denoise),)
        kind = model_kind(model.prediction_type)
        # values shown/edited downstream: computed with the euler scheduler of this model kind
        msg = check_combination("euler", scheduler, kind)
        if msg:
            raise NodeError(msg, input_name="scheduler")
        values = S.schedule_values(model, "euler", scheduler, steps, denoise)
        return (S.Sigmas(values, scheduler, steps, denoise),)


class KarrasScheduler(Node):
    """An explicit Karras et al. (2022) sigma schedule: ρ-spaced between sigma_max and sigma_min."""

    CATEGORY = "sampling/custom_sampling/schedulers"
    INPUTS = (
        Int("steps", 20, min=1, max=10000),
        Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False),
        Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False),
        Float("rho", 7.0, min=0.0, max=100.0, step=0.01, round=False),
    )
    OUTPUTS = (Output("SIGMAS"),)

    def execute(self, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float, rho: float):
        import torch

        from nodes.diffusion import sampling as S

        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        sig = (hi + ramp * (lo - hi)) ** rho
        values = torch.cat([sig, sig.new_zeros(1)]).float()
        return (S.Sigmas(values, None, steps, 1.0),)


class KSamplerSelect(Node):
    """Pick a sampler by name for SamplerCustom / SamplerCustomAdvanced."""

    CATEGORY = "sampling/custom_sampling/samplers"
    INPUTS = (Combo("sampler_name", SAMPLER_NAMES),)
    OUTPUTS = (Output("SAMPLER"),)

    @classmethod
    def validate_inputs(cls, sampler_name=None):
        if sampler_name is None:
            return True
        return check_sampler(str(sampler_name)) or True

    def execute(self, ctx: NodeContext, sampler_name: str):
        from nodes.diffusion import sampling as S

        return (S.SamplerChoice(sampler_name),)


class RandomNoise(Node):
    """Noise from a seed (CPU generator, diffusers' randn_tensor)."""

    CATEGORY = "sampling/custom_sampling/noise"
    CACHE = CachePolicy.SEEDED
    INPUTS = (Seed("noise_seed"),)
    OUTPUTS = (Output("NOISE"),)

    def execute(self, ctx: NodeContext, noise_seed: int):
        from nodes.diffusion import sampling as S

        return (S.NoiseSource(seed=noise_seed, add=True),)


class DisableNoise(Node):
    """No initial noise (for latents that already carry leftover noise)."""

    CATEGORY = "sampling/custom_sampling/noise"
    OUTPUTS = (Output("NOISE"),)

    def execute(self, ctx: NodeContext):
        from nodes.diffusion import sampling as S

        return (S.NoiseSource(seed=0, add=False),)


# --- model patches -------------------------------------------------------------------------------

class ModelSamplingFlux(Node):
    """Set FLUX's timestep shift from an image size: mu = base_shift + (tokens - 256)·slope, where
    tokens = width·height/256 and the slope reaches max_shift at 4096 tokens."""

    CATEGORY = "advanced/model"
    INPUTS = (
        Socket("model", "MODEL"),
        Float("max_shift", 1.15, min=0.0, max=100.0, step=0.01),
        Float("base_shift", 0.5, min=0.0, max=100.0, step=0.01),
        Int("width", 1024, min=16, max=MAX_RESOLUTION, step=8),
        Int("height", 1024, min=16, max=MAX_RESOLUTION, step=8),
    )
    OUTPUTS = (Output("MODEL"),)

    def execute(self, ctx: NodeContext, model: DiffusionModel, max_shift: float, base_shift: float, width: int,
                height: int):
        if not model.family.is_flux:
            raise NodeError(f"ModelSamplingFlux needs a FLUX model, got {model.family.value}", input_name="model")
        slope = (max_shift - base_shift) / (4096 - 256)
        mu = (width * height / (8 * 8 * 2 * 2)) * slope + (base_shift - slope * 256)
        sampling = {**model.sampling, "mu": mu, "max_shift": max_shift, "base_shift": base_shift,
                    "width": width, "height": height}
        return (replace(model, sampling=sampling),)


class ModelSamplingDiscrete(Node):
    """Override how a discrete-time (SD) model's output is read: epsilon or v-prediction, optionally
    with zero-terminal-SNR betas."""

    CATEGORY = "advanced/model"
    SUPPORTED = ("eps", "v_prediction")
    INPUTS = (
        Socket("model", "MODEL"),
        Combo("sampling", ("eps", "v_prediction", "lcm", "x0", "img_to_img", "img_to_img_flow")),
        Boolean("zsnr", False),
    )
    OUTPUTS = (Output("MODEL"),)

    @classmethod
    def validate_inputs(cls, sampling=None):
        if sampling is None or sampling in cls.SUPPORTED:
            return True
        return f"sampling '{sampling}' has no diffusers equivalent here; supported: {', '.join(cls.SUPPORTED)}"

    def execute(self, ctx: NodeContext, model: DiffusionModel, sampling: str, zsnr: bool):
        if model.family.is_flux:
            raise NodeError("ModelSamplingDiscrete applies to SD1.5/SDXL models; use ModelSamplingFlux for FLUX",
                            input_name="model")
        if sampling not in self.SUPPORTED:
            raise NodeError(self.validate_inputs(sampling), input_name="sampling")
        prediction = "epsilon" if sampling == "eps" else "v_prediction"
        return (replace(model, prediction_type=prediction, sampling={**model.sampling, "zsnr": bool(zsnr)}),)


class ModelMergeSimple(Node):
    """Blend two models' weights: ratio·model1 + (1 - ratio)·model2.  Applied while sampling, so both
    base models stay resident and unchanged."""

    CATEGORY = "advanced/model_merging"
    INPUTS = (Socket("model1", "MODEL"), Socket("model2", "MODEL"), Float("ratio", 1.0, min=0.0, max=1.0, step=0.01))
    OUTPUTS = (Output("MODEL"),)

    def execute(self, ctx: NodeContext, model1: DiffusionModel, model2: DiffusionModel, ratio: float):
        if model1.family != model2.family:
            raise NodeError(f"cannot merge a {model1.family.value} model with a {model2.family.value} model",
                            input_name="model2")
        if ratio >= 1.0:
            return (model1,)
        return (replace(model1, merges=model1.merges + ((model2, float(ratio)),)),)
