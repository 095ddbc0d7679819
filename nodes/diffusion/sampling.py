"""The sampling loop on diffusers components, split the way the node graph splits it.

One call of :func:`sample` is one KSampler run: a *fresh* diffusers scheduler built from the
model's ``scheduler_config`` (:mod:`nodes.diffusion.schedulers`), noise from the seed, and the
denoising loop of the diffusers pipelines, step for step:

* **Seed → noise.**  ``torch.Generator("cpu").manual_seed(seed)``; the initial noise is
  ``randn_tensor(latent.shape, generator)`` in float32 on the CPU (then moved), and the *same*
  generator object is handed to ``scheduler.step`` (ancestral/SDE samplers draw from it).  That is
  what ``StableDiffusionPipeline(generator=torch.Generator("cpu").manual_seed(seed))`` does, so a seed
  gives the pipeline's image — and the same image on any device.  (ComfyUI draws its noise
  differently, so the same seed gives a different image than in ComfyUI.)
* **txt2img** (``denoise == 1``): ``latents = noise · init_noise_sigma``.
* **img2img** (``denoise < 1``): the diffusers ``strength`` rule — run the last
  ``int(steps · denoise)`` of ``steps`` timesteps, after ``scheduler.add_noise`` (``scale_noise`` for
  flow matching) at the first of them.
* **inpaint** (LATENT ``noise_mask``, 1 = repaint): after each step the kept region is replaced by
  the source latent noised to the next timestep, as ``StableDiffusionInpaintPipeline`` does for
  4-channel UNets.
* **CFG**: uncond and cond rows in one batched call (:mod:`nodes.diffusion.guidance`); cfg == 1
  skips the uncond pass.
* **KSamplerAdvanced** step windows: ``start_step``/``end_step`` slice the timesteps; a latent handed
  on "with leftover noise" is always in the k-diffusion convention ``x0 + σ·ε`` (as in ComfyUI), so
  chains across samplers whose diffusers schedulers live in variance-preserving space (DDIM,
  DPM-Solver, UniPC) stay consistent.

Nothing here knows the graph runtime: progress and interrupt come in as callables.
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from nodes.diffusion import guidance as G
from nodes.diffusion.model_patches import patched_denoiser
from nodes.diffusion.previews import preview_image
from nodes.diffusion.schedulers import build_scheduler, calculate_shift, model_kind
from nodes.diffusion.types import CondEntry, DiffusionModel, ModelFamily

log = logging.getLogger(__name__)

DEFAULT_LATENT_FORMAT: dict[ModelFamily, tuple[float, float]] = {
    ModelFamily.SD15: (0.18215, 0.0),
    ModelFamily.SDXL: (0.13025, 0.0),
    ModelFamily.SDXL_REFINER: (0.13025, 0.0),
    ModelFamily.FLUX_DEV: (0.3611, 0.1159),
    ModelFamily.FLUX_SCHNELL: (0.3611, 0.1159),
}
# diffusers schedulers whose sample lives in variance-preserving space (√ᾱ·x0 + √(1-ᾱ)·ε)
_VP_SPACE = {"DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}


# ---------------------------------------------------------------------------------------------
# values of the custom-sampling types (ComfyUI's SAMPLER, SIGMAS, NOISE, GUIDER)

@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER: a ComfyUI sampler name (resolved to a diffusers scheduler at run time)."""

    name: str


@dataclass(frozen=True)
class Sigmas:
    """SIGMAS: a noise schedule.

    ``values`` are the sigmas that will run, descending, ending with 0 (ComfyUI's convention; for
    flow models they are the flow times).  When ``scheduler`` is set (BasicScheduler), the sampler
    asks diffusers for exactly that named schedule, so results match the pipelines; a bare
    schedule (``scheduler`` None, e.g. KarrasScheduler's custom range) is followed literally, which
    only samplers accepting ``set_timesteps(sigmas=…)`` can do.
    """

    values: torch.Tensor
    scheduler: str | None = None
    steps: int = 0
    denoise: float = 1.0

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class NoiseSource:
    """NOISE: RandomNoise(seed) or DisableNoise (``add`` False; the seed still drives ancestral steps)."""

    seed: int = 0
    add: bool = True


@dataclass(frozen=True)
class Guider:
    """GUIDER: a model plus its conditioning and CFG scale (BasicGuider: no negative, cfg 1)."""

    model: DiffusionModel
    positive: tuple
    negative: tuple | None = None
    cfg: float = 1.0


# ---------------------------------------------------------------------------------------------
# request / result

@dataclass
class SamplingRequest:
    model: DiffusionModel
    positive: Sequence[CondEntry]
    negative: Sequence[CondEntry] | None
    latent: dict
    sampler: str = "euler"
    scheduler: str | None = "normal"
    steps: int = 20
    cfg: float = 8.0
    seed: int = 0
    add_noise: bool = True
    denoise: float = 1.0
    start_step: int = 0
    end_step: int | None = None
    return_with_leftover_noise: bool = False
    custom_sigmas: Sequence[float] | None = None  # explicit descending schedule, without the final 0


@dataclass
class SamplingResult:
    latent: dict      # output LATENT (raw VAE space)
    denoised: dict    # the last step's x0 estimate (raw VAE space)
    steps_run: int


@dataclass
class RunOptions:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    progress: Callable[[int, int, Any], None] | None = None
    check_interrupted: Callable[[], None] | None = None
    previews: bool = True


def latent_format(model: DiffusionModel) -> tuple[float, float]:
    scale, shift = DEFAULT_LATENT_FORMAT.get(model.family, (1.0, 0.0))
    return (model.latent_scale if model.latent_scale is not None else scale,
            model.latent_shift if model.latent_shift is not None else shift)


def latent_channels(model: DiffusionModel) -> int | None:
    """Latent channels the denoiser samples: its output width (FLUX: token width / 4).

    Models with extra input channels (FLUX Canny/Depth, InstructPix2Pix) take more than they return.
    """
    cfg = getattr(model.denoiser, "config", None)
    n = getattr(cfg, "out_channels", None) or getattr(cfg, "in_channels", None)
    if n is None:
        return None
    return int(n) // 4 if model.family.is_flux else int(n)


def flux_mu(model: DiffusionModel, latent_hw: tuple[int, int]) -> float | None:
    """The FLUX shift exponent: ModelSamplingFlux's value, else calculate_shift of the token count
    (when the scheduler config uses dynamic shifting, as FLUX.1-dev's does)."""
    if "mu" in model.sampling:
        return float(model.sampling["mu"])
    cfg = model.scheduler_config
    if not cfg.get("use_dynamic_shifting", False):
        return None
    h, w = latent_hw
    return calculate_shift((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))


# ---------------------------------------------------------------------------------------------
# schedule helpers

def _sigma_at(sched: Any, idx: int, t: torch.Tensor) -> float:
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None and idx < len(sigmas):
        return float(sigmas[idx])
    ac = sched.alphas_cumprod[int(t)]
    return float(((1 - ac) / ac) ** 0.5)


def _estimate_x0(x: torch.Tensor, out: torch.Tensor, sigma: float, kind: str, vp: bool) -> torch.Tensor:
    if kind == "flow":
        return x - sigma * out
    if vp:
        alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
        s = sigma * alpha
        return (x - s * out) / alpha if kind == "eps" else alpha * x - s * out
    if kind == "eps":
        return x - sigma * out
    return x / (sigma * sigma + 1.0) - (sigma / math.sqrt(sigma * sigma + 1.0)) * out


def _add_noise(sched: Any, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if hasattr(sched, "scale_noise"):
        return sched.scale_noise(clean, t, noise)
    return sched.add_noise(clean, noise, t)


def _step_kwargs(sched: Any, generator: torch.Generator) -> dict[str, Any]:
    params = inspect.signature(sched.step).parameters
    kw: dict[str, Any] = {}
    if "generator" in params:
        kw["generator"] = generator
    if "eta" in params:
        kw["eta"] = 0.0
    return kw


def schedule_values(model: DiffusionModel, sampler: str, scheduler: str, steps: int, denoise: float = 1.0,
                    latent_hw: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """The sigmas a named schedule will run (for SIGMAS values), after the ``denoise`` truncation.

    For FLUX, the shift depends on the image size; ``latent_hw`` defaults to 1024×1024 like
    ComfyUI's ModelSamplingFlux default.
    """
    kind = model_kind(model.prediction_type)
    mu = flux_mu(model, latent_hw) if kind == "flow" else None
    built = build_scheduler(model.scheduler_config, sampler, scheduler, kind=kind, steps=steps, mu=mu,
                            zsnr=bool(model.sampling.get("zsnr")))
    built.scheduler.set_timesteps(**built.timestep_kwargs)
    sig = torch.as_tensor(built.scheduler.sigmas, dtype=torch.float32).flatten()
    if sig[-1] != 0:
        sig = torch.cat([sig, sig.new_zeros(1)])
    if denoise < 1.0:
        run = min(int(steps * denoise), steps)
        sig = sig[-(run + 1):] if run > 0 else sig[:0]
    return sig


# ---------------------------------------------------------------------------------------------
# the loop

def _check_channels(denoiser: Any, latent: torch.Tensor, model: DiffusionModel, concat: int = 0) -> None:
    want = denoiser.in_channels
    got = latent.shape[1]
    if want != got + concat:
        hint = " (use EmptySD3LatentImage for FLUX)" if model.family.is_flux and got == 4 else ""
        if want > got and not concat and model.family.is_flux:
            hint = " (this model takes the control image as extra channels: use InstructPixToPixConditioning)"
        if not model.family.is_flux and want == got + 5:
            hint = " (9-channel inpainting UNets are not supported; use a regular checkpoint with a noise mask)"
        raise ValueError(f"the latent has {got} channels but the model expects {want}{hint}")


@torch.no_grad()
def sample(req: SamplingRequest, run: RunOptions) -> SamplingResult:
    """Run one sampling pass; see the module docstring for the exact semantics."""
    model = req.model
    kind = model_kind(model.prediction_type)
    scale, shift = latent_format(model)
    device, dtype = run.device, run.dtype
    raw = req.latent["samples"].float()
    if raw.ndim != 4:
        raise ValueError(f"LATENT samples must be (B, C, H, W), got shape {tuple(raw.shape)}")
    want = latent_channels(model)
    if want is not None and raw.shape[1] != want and not raw.any():
        # an empty latent of another family (EmptyLatentImage into FLUX): zeros of the model's width, as ComfyUI
        raw = torch.zeros(raw.shape[0], want, *raw.shape[2:])
    b, c, h, w = raw.shape
    if model.family.is_flux and (h % 2 or w % 2):
        raise ValueError(f"FLUX latents need even sides; got {w}×{h} (image sides must be multiples of 16)")

    custom = None if req.custom_sigmas is None else np.asarray(list(req.custom_sigmas), dtype=np.float64)
    if custom is not None:
        custom = custom[custom > 0] if custom.size and custom[-1] == 0 else custom
    mu = flux_mu(model, (h, w)) if kind == "flow" else None
    built = build_scheduler(model.scheduler_config, req.sampler, req.scheduler or "simple", kind=kind,
                            steps=req.steps, mu=mu, zsnr=bool(model.sampling.get("zsnr")), seed=req.seed,
                            custom_sigmas=custom)
    sched = built.scheduler
    sched.set_timesteps(**built.timestep_kwargs, device=device)
    timesteps = sched.timesteps
    order = int(getattr(sched, "order", 1))
    total = len(custom) if custom is not None else req.steps

    # which steps run: img2img strength (diffusers' rule) or a KSamplerAdvanced window
    first_step = 0
    if req.denoise < 1.0:
        init = min(int(total * req.denoise), total)
        first_step = max(total - init, 0)
    first_step = max(first_step, req.start_step)
    last_step = total if req.end_step is None else min(req.end_step, total)
    first = first_step * order
    last = len(timesteps) if last_step >= total else last_step * order
    if first >= last:
        out = dict(req.latent)
        return SamplingResult(out, dict(out), 0)
    run_ts = timesteps[first:last]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(first)
    steps_run = last_step - first_step
    force_full = last_step < total and not req.return_with_leftover_noise
    vp = kind != "flow" and any(c.__name__ in _VP_SPACE for c in type(sched).__mro__)

    generator = torch.Generator("cpu").manual_seed(int(req.seed))
    from diffusers.utils.torch_utils import randn_tensor

    noise = randn_tensor((b, c, h, w), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
    noise = noise.to(device=device, dtype=dtype)
    if not req.add_noise:
        noise = torch.zeros_like(noise)
    x_model = ((raw - shift) * scale).to(device=device, dtype=dtype)

    if req.add_noise and first == 0 and req.denoise >= 1.0:
        init_sigma = getattr(sched, "init_noise_sigma", None)  # flow-matching schedulers start at σ = 1
        latents = noise if init_sigma is None else noise * init_sigma
    elif req.add_noise:
        latents = _add_noise(sched, x_model, noise, run_ts[:1])
    else:
        latents = x_model
        if vp:  # leftover-noise latents arrive as x0 + σ·ε; this scheduler works on √ᾱ·x0 + √(1-ᾱ)·ε
            latents = latents / math.sqrt(1.0 + _sigma_at(sched, first, run_ts[0]) ** 2)

    mask = None
    if "noise_mask" in req.latent and req.latent["noise_mask"] is not None:
        mask = G._mask_to_latent(req.latent["noise_mask"], h, w)
        if mask.shape[0] != b:
            mask = mask.repeat(math.ceil(b / mask.shape[0]), 1, 1, 1)[:b]
        mask = mask.to(device=device, dtype=dtype)

    pixel_hw = (h * 8, w * 8)
    positive = G.prepare_conditioning(model, req.positive, latent_hw=(h, w), pixel_hw=pixel_hw, device=device,
                                      dtype=dtype)
    negative = None
    if req.negative is not None:
        negative = G.prepare_conditioning(model, req.negative, latent_hw=(h, w), pixel_hw=pixel_hw, device=device,
                                          dtype=dtype, negative=True)
    step_kw = _step_kwargs(sched, generator)
    n_train = int(getattr(sched.config, "num_train_timesteps", 1000))
    warmup = len(run_ts) - steps_run * order
    x0 = latents
    done = 0

    with patched_denoiser(model, device, dtype) as module:
        denoiser = G.make_denoiser(model, module)
        _check_channels(denoiser, raw, model, max((p.concat.shape[1] for p in positive if p.concat is not None),
                                                  default=0))
        for i, t in enumerate(run_ts):
            if run.check_interrupted is not None:
                run.check_interrupted()
            idx = first + i
            percent = float(min(max(1.0 - float(t) / (n_train if kind == "flow" else n_train - 1), 0.0), 1.0))
            sigma = _sigma_at(sched, idx, t)
            model_in = sched.scale_model_input(latents, t) if hasattr(sched, "scale_model_input") else latents
            pred = G.guided_prediction(denoiser, model_in, t, positive, negative, req.cfg, percent)
            out = sched.step(pred, t, latents, **step_kw, return_dict=True)
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:
                x0 = _estimate_x0(latents, pred, sigma, kind, vp)
            latents = out.prev_sample
            is_last = i == len(run_ts) - 1
            if is_last and force_full:
                latents = x0
            if mask is not None:
                proper = x_model
                nxt = idx + 1
                if nxt < len(timesteps) and not (is_last and force_full):
                    proper = _add_noise(sched, x_model, noise, timesteps[nxt:nxt + 1])
                latents = (1 - mask) * proper + mask * latents
            if is_last or ((i + 1) > warmup and (i + 1) % order == 0):
                done += 1
                if run.progress is not None:
                    preview = preview_image(x0, model.family) if run.previews else None
                    run.progress(done, steps_run, preview)

    if vp and not force_full and last < len(timesteps):
        # hand leftover noise on in the k-diffusion convention x0 + σ·ε
        latents = latents * math.sqrt(1.0 + _sigma_at(sched, last, timesteps[last]) ** 2)
    out_latent = {k: v for k, v in req.latent.items() if k != "samples"}
    # contiguous: the inpaint blend can yield channels-last strides, and convolutions on those take
    # other kernels (1e-6 drift in the VAE decode)
    out_latent["samples"] = (latents / scale + shift).float().cpu().contiguous()
    denoised = dict(out_latent)
    denoised["samples"] = (x0 / scale + shift).float().cpu().contiguous()
    return SamplingResult(out_latent, denoised, done)
