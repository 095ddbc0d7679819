"""Sampling nodes: KSampler, KSamplerAdvanced, the custom-sampling family, model sampling patches.

The run itself lives in :mod:`nodes.diffusion.sampling` and follows ComfyUI's semantics: the named
scheduler's sigmas for the model, ``denoise`` < 1 as the last ``steps`` of an ``int(steps / denoise)``
step schedule (the widget's ``steps`` is what runs), the initial noise from a CPU generator seeded
with the seed, ancestral and SDE samplers' step noise seeded from the same seed, and the LATENT's
noise mask for inpainting.  These nodes only translate their inputs into a
:class:`~nodes.diffusion.sampling.SamplingRequest`.

SIGMAS values are 1-D float tensors (descending, ending with 0 for a full denoise), as in ComfyUI,
so schedules can be split, edited and handed between nodes.  Every one of ComfyUI's 42 sampler names
runs with every scheduler on every model family; a name ComfyUI does not have is refused when the
prompt is queued (``validate_inputs``) with the list of those that run.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import (MAX_RESOLUTION, Boolean, CachePolicy, Combo, Float, Int, Node, NodeResult, Output,
                                  Resource, Seed, Socket)
from nodes.diffusion.schedulers import SAMPLER_NAMES, SCHEDULER_NAMES, check_combination, check_sampler

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
    msg = check_sampler(req.sampler)
    if msg:
        raise NodeError(msg, input_name="sampler_name")
    ctx.record(device=str(device), dtype=str(dtype).replace("torch.", ""), sampler=req.sampler,
               scheduler=req.scheduler if req.sigmas is None else "custom sigmas")
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

    ComfyUI's semantics: ``steps`` steps of the scheduler run (with ``denoise`` < 1, the last
    ``steps`` of an ``int(steps / denoise)``-step schedule); the noise comes from the seed as in ComfyUI.
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
              tooltip="The amount of denoising applied; lower values keep more of the input latent."),
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
                                add_noise=add_noise == "enable", start_step=start_at_step, last_step=end_at_step,
                                force_full_denoise=return_with_leftover_noise != "enable")
        return (_run(ctx, req).latent,)


# --- custom sampling -----------------------------------------------------------------------------

def _as_sigmas(sigmas: Any):
    import torch

    return torch.as_tensor(sigmas, dtype=torch.float32).flatten()


def _custom_sample(ctx: NodeContext, *, model: DiffusionModel, positive, negative, cfg: float, sampler: Any,
                   sigmas: Any, latent_image: dict, seed: int, add_noise: bool) -> NodeResult | tuple:
    from nodes.diffusion import sampling as S

    name = sampler.name if isinstance(sampler, S.SamplerChoice) else str(sampler)
    req = S.SamplingRequest(model=model, positive=positive, negative=negative, latent=latent_image, sampler=name,
                            cfg=cfg, seed=seed, add_noise=add_noise, sigmas=_as_sigmas(sigmas))
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
    """The named noise schedule for a model: ``steps`` sigmas (the last ``steps`` of an
    ``int(steps / denoise)``-step schedule when ``denoise`` < 1), then 0."""

    CATEGORY = "sampling/custom_sampling/schedulers"
    INPUTS = (
        Socket("model", "MODEL"),
        Combo("scheduler", SCHEDULER_NAMES),
        Int("steps", 20, min=1, max=10000),
        Float("denoise", 1.0, min=0.0, max=1.0, step=0.01),
    )
    OUTPUTS = (Output("SIGMAS"),)

    def execute(self, ctx: NodeContext, model: DiffusionModel, scheduler: str, steps: int, denoise: float):
        import torch

        from nodes.diffusion.model_sampling import model_sampling_for
        from nodes.diffusion.schedulers import calculate_sigmas

        total = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return (torch.zeros(0),)
            total = int(steps / denoise)
        sigmas = calculate_sigmas(model_sampling_for(model), scheduler, total).cpu()
        return (sigmas[-(steps + 1):],)


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
        from nodes.diffusion.schedulers import karras_sigmas

        return (karras_sigmas(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(Node):
    """Sigmas spaced evenly in log σ between sigma_max and sigma_min, then 0."""

    CATEGORY = "sampling/custom_sampling/schedulers"
    INPUTS = (
        Int("steps", 20, min=1, max=10000),
        Float("sigma_max", 14.614642, min=0.0, max=5000.0, step=0.01, round=False),
        Float("sigma_min", 0.0291675, min=0.0, max=5000.0, step=0.01, round=False),
    )
    OUTPUTS = (Output("SIGMAS"),)

    def execute(self, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float):
        from nodes.diffusion.schedulers import exponential_sigmas

        return (exponential_sigmas(steps, sigma_min, sigma_max),)


class SplitSigmas(Node):
    """Split a schedule at a step: the first part runs steps [0, step), the second the rest."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    INPUTS = (Socket("sigmas", "SIGMAS"), Int("step", 0, min=0, max=10000))
    OUTPUTS = (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas"))

    def execute(self, ctx: NodeContext, sigmas, step: int):
        sigmas = _as_sigmas(sigmas)
        return (sigmas[:step + 1], sigmas[step:])


class SplitSigmasDenoise(Node):
    """Split a schedule so that the second part holds the last ``denoise`` fraction of its steps."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    INPUTS = (Socket("sigmas", "SIGMAS"), Float("denoise", 1.0, min=0.0, max=1.0, step=0.01))
    OUTPUTS = (Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas"))

    def execute(self, ctx: NodeContext, sigmas, denoise: float):
        sigmas = _as_sigmas(sigmas)
        steps = max(sigmas.shape[-1] - 1, 0)
        total = round(steps * denoise)
        return (sigmas[:-total], sigmas[-(total + 1):])


class FlipSigmas(Node):
    """Reverse a schedule (for unsampling); a leading 0 becomes 0.0001 so the first step is defined."""

    CATEGORY = "sampling/custom_sampling/sigmas"
    INPUTS = (Socket("sigmas", "SIGMAS"),)
    OUTPUTS = (Output("SIGMAS"),)

    def execute(self, ctx: NodeContext, sigmas):
        sigmas = _as_sigmas(sigmas)
        if len(sigmas) == 0:
            return (sigmas,)
        sigmas = sigmas.flip(0)
        if sigmas[0] == 0:
            sigmas[0] = 0.0001
        return (sigmas,)


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
    """Noise from a seed (ComfyUI's rule: a CPU generator seeded with it, one draw of the latent's shape)."""

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
