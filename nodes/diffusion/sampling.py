"""One sampling run with ComfyUI's semantics, split the way the node graph splits it.

:func:`sample` is what ComfyUI's KSampler / KSamplerAdvanced / SamplerCustom(Advanced) do
(``comfy/samplers.py``, ``comfy/sample.py``; read for the facts, our own code):

1. **Schedule.**  Either explicit SIGMAS (custom sampling), or ``steps`` of the named scheduler for
   the model (:func:`~nodes.diffusion.schedulers.ksampler_sigmas`): ``denoise`` < 1 runs the last
   ``steps`` of an ``int(steps / denoise)``-step schedule; KSamplerAdvanced's ``end_at_step`` cuts the
   schedule (σ → 0 at the cut unless the leftover noise is returned) and ``start_at_step`` skips the
   first steps.  An empty schedule returns the input latent.
2. **Noise.**  :func:`~nodes.diffusion.noise.initial_noise` from the seed (zeros with ``add_noise``
   off), mixed with the input latent at the first σ by the model's ``noise_scaling``: ``latent +
   σ·noise``, or ``latent + √(1 + σ²)·noise`` when the schedule starts at the model's σ_max (SD), or
   ``(1 - σ)·latent + σ·noise`` (FLUX).  The input latent enters in model space (``(raw - shift)·
   scale``) unless it is all zeros (an empty latent stays zero).
3. **Denoiser.**  ``model(x, σ)``: the model's input scaling, the timestep nearest σ, classifier-free
   guidance (:mod:`nodes.diffusion.guidance`, uncond and cond rows in one batched call; cfg 1 skips
   the uncond pass) and the model's output → denoised conversion.  The CFG++ samplers call
   ``model.with_uncond(x, σ)`` instead, which also returns the unconditional estimate (the uncond pass
   runs even at cfg 1; zeros without negative conditioning, as in ComfyUI).
4. **Inpainting** (LATENT ``noise_mask``, 1 = repaint, resized bilinearly to the latent): before every
   model call the kept region of ``x`` is replaced by the input latent noised to the current σ with
   the run's initial noise (``ddim``: separate noise from seed + 1), and the denoised estimate's kept
   region by the input latent itself.
5. **Sampler** (:mod:`nodes.diffusion.k_samplers`), then ``inverse_noise_scaling`` at the last σ
   (FLUX latents handed on with leftover noise are divided by 1 - σ, as ComfyUI does) and back to
   raw VAE space.

The sampler state lives in float32 on the run's device; the denoiser runs in the run's dtype.
Nothing here knows the graph runtime: progress and interrupt come in as callables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from nodes.diffusion import guidance as G
from nodes.diffusion.k_samplers import RANDOM_INPAINT_NOISE, SAMPLER_FUNCTIONS, SamplerEnv
from nodes.diffusion.model_patches import patched_denoiser
from nodes.diffusion.model_sampling import ModelSampling, model_sampling_for
from nodes.diffusion.noise import initial_noise
from nodes.diffusion.previews import preview_image
from nodes.diffusion.schedulers import check_sampler, check_scheduler, ksampler_sigmas, step_window
from nodes.diffusion.types import CondEntry, DiffusionModel, ModelFamily

DEFAULT_LATENT_FORMAT: dict[ModelFamily, tuple[float, float]] = {
    ModelFamily.SD15: (0.18215, 0.0),
    ModelFamily.SDXL: (0.13025, 0.0),
    ModelFamily.SDXL_REFINER: (0.13025, 0.0),
    ModelFamily.FLUX_DEV: (0.3611, 0.1159),
    ModelFamily.FLUX_SCHNELL: (0.3611, 0.1159),
}


# ---------------------------------------------------------------------------------------------
# values of the custom-sampling types (ComfyUI's SAMPLER, NOISE, GUIDER; SIGMAS is a 1-D tensor)

@dataclass(frozen=True)
class SamplerChoice:
    """SAMPLER: a sampler name (KSamplerSelect)."""

    name: str


@dataclass(frozen=True)
class NoiseSource:
    """NOISE: RandomNoise(seed) or DisableNoise (``add`` False, seed 0 — which still seeds ancestral steps)."""

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
    """One run.  ``sigmas`` (explicit schedule, descending, usually ending with 0) replaces
    ``scheduler``/``steps``/``denoise``; ``start_step``/``last_step``/``force_full_denoise`` are
    KSamplerAdvanced's window (None: whole schedule)."""

    model: DiffusionModel
    positive: Sequence[CondEntry]
    negative: Sequence[CondEntry] | None
    latent: dict
    sampler: str = "euler"
    scheduler: str = "normal"
    steps: int = 20
    cfg: float = 8.0
    seed: int = 0
    add_noise: bool = True
    denoise: float = 1.0
    start_step: int | None = None
    last_step: int | None = None
    force_full_denoise: bool = False
    sigmas: Sequence[float] | torch.Tensor | None = None


@dataclass
class SamplingResult:
    latent: dict      # output LATENT (raw VAE space)
    denoised: dict    # the last step's x0 estimate (raw VAE space); the output itself if no step ran
    steps_run: int
    sigmas: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # the schedule that ran


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


def schedule(model: DiffusionModel, sampler: str, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """The sigmas a KSampler with these widgets runs on ``model`` (before KSamplerAdvanced's window)."""
    return ksampler_sigmas(model_sampling_for(model), sampler, scheduler, steps, denoise)


def fix_empty_latent_channels(model: DiffusionModel, samples: torch.Tensor) -> torch.Tensor:
    """An all-zero latent of another family (EmptyLatentImage into FLUX) becomes zeros of the model's width."""
    want = latent_channels(model)
    if want is not None and samples.ndim == 4 and samples.shape[1] != want and not samples.any():
        return torch.zeros(samples.shape[0], want, *samples.shape[2:])
    return samples


def prepare_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A LATENT noise mask at the latent's size (bilinear), channels and batch."""
    m = mask.float()
    m = m.reshape((-1, 1, m.shape[-2], m.shape[-1]))
    m = torch.nn.functional.interpolate(m, size=(shape[2], shape[3]), mode="bilinear")
    m = torch.cat([m] * shape[1], dim=1)
    if m.shape[0] < shape[0]:
        m = m.repeat(math.ceil(shape[0] / m.shape[0]), 1, 1, 1)
    return m[:shape[0]]


# ---------------------------------------------------------------------------------------------
# the denoiser as the samplers see it

class Denoiser:
    """``model(x, σ) → denoised`` for the samplers: scalings, CFG, inpainting blend, interrupt checks."""

    def __init__(self, ms: ModelSampling, adapter: Any, positive, negative, cfg: float, dtype: torch.dtype,
                 check_interrupted: Callable[[], None] | None = None) -> None:
        self.ms = ms
        self.adapter = adapter
        self.positive, self.negative, self.cfg = positive, negative, cfg
        self.dtype = dtype
        self.check_interrupted = check_interrupted
        self.mask: torch.Tensor | None = None
        self.latent: torch.Tensor | None = None
        self.inpaint_noise: torch.Tensor | None = None
        self.calls = 0
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (x, denoised, output)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._evaluate(x, sigma, keep_uncond=False)[0]

    def with_uncond(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(denoised, uncond_denoised) of one call, for the CFG++ samplers.

        As in ComfyUI: the negative side is evaluated even at cfg 1 (in the same batched call); the
        unconditional estimate is taken before the inpainting blend; with no negative conditioning
        (BasicGuider) it is zeros, which is what ComfyUI's batch of an absent conditioning yields.
        """
        denoised, uncond = self._evaluate(x, sigma, keep_uncond=True)
        return denoised, uncond if uncond is not None else torch.zeros_like(denoised)

    def _evaluate(self, x: torch.Tensor, sigma: torch.Tensor,
                  keep_uncond: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.check_interrupted is not None:
            self.check_interrupted()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(())
        x_in = x
        if self.mask is not None:
            kept = self.ms.noise_scaling(sigma, self.inpaint_noise, self.latent)
            x = x * self.mask + kept * (1.0 - self.mask)
        model_in = self.ms.calculate_input(sigma, x).to(self.dtype)
        t = self.ms.denoiser_timestep(sigma).to(x.device)
        percent = self.ms.sigma_to_percent(float(sigma))
        out, uncond_out = G.guided_prediction_and_uncond(self.adapter, model_in, t, self.positive, self.negative,
                                                         self.cfg, percent, keep_uncond=keep_uncond)
        out = out.float()
        self.calls += 1
        denoised = self.ms.calculate_denoised(sigma, out, x)
        uncond = None
        if keep_uncond and uncond_out is not None:
            uncond = self.ms.calculate_denoised(sigma, uncond_out.float(), x)
        if self.mask is not None:
            denoised = denoised * self.mask + self.latent * (1.0 - self.mask)
        self._last = (x_in, denoised, out) if self.mask is None else None
        return denoised, uncond

    def derivative(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """(x - denoised)/σ; for flow models the predicted velocity itself when it is that quantity."""
        last = self._last
        if self.ms.kind == "flow" and last is not None and last[0] is x and last[1] is denoised:
            return last[2]
        return (x - denoised) / sigma


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


def _run_sigmas(req: SamplingRequest, ms: ModelSampling) -> torch.Tensor | None:
    if req.sigmas is not None:
        sigmas = torch.as_tensor(req.sigmas, dtype=torch.float32).flatten().clone()
    else:
        msg = check_scheduler(req.scheduler)
        if msg:
            raise ValueError(msg)
        sigmas = ksampler_sigmas(ms, req.sampler, req.scheduler, req.steps, req.denoise)
    return step_window(sigmas, req.start_step, req.last_step, req.force_full_denoise)


@torch.no_grad()
def sample(req: SamplingRequest, run: RunOptions) -> SamplingResult:
    """Run one sampling pass; see the module docstring for the exact semantics."""
    model = req.model
    msg = check_sampler(req.sampler)
    if msg:
        raise ValueError(msg)
    raw = req.latent["samples"].float()
    if raw.ndim != 4:
        raise ValueError(f"LATENT samples must be (B, C, H, W), got shape {tuple(raw.shape)}")
    raw = fix_empty_latent_channels(model, raw)
    b, c, h, w = raw.shape
    if model.family.is_flux and (h % 2 or w % 2):
        raise ValueError(f"FLUX latents need even sides; got {w}×{h} (image sides must be multiples of 16)")
    ms = model_sampling_for(model)
    sigmas = _run_sigmas(req, ms)
    unchanged = {**req.latent, "samples": raw}
    if sigmas is None or len(sigmas) == 0:
        return SamplingResult(unchanged, dict(unchanged), 0)

    device, dtype = run.device, run.dtype
    sigmas = sigmas.to(device)
    if req.add_noise:
        noise = initial_noise(raw.shape, req.seed, req.latent.get("batch_index"))
    else:
        noise = torch.zeros(raw.shape)
    noise = noise.to(device)
    scale, shift = latent_format(model)
    latent = ((raw - shift) * scale if raw.any() else raw).to(device)

    mask = None
    if req.latent.get("noise_mask") is not None:
        mask = prepare_mask(req.latent["noise_mask"], raw.shape).to(device)

    pixel_hw = (h * 8, w * 8)
    positive = G.prepare_conditioning(model, req.positive, latent_hw=(h, w), pixel_hw=pixel_hw, device=device,
                                      dtype=dtype)
    negative = None
    if req.negative is not None:
        negative = G.prepare_conditioning(model, req.negative, latent_hw=(h, w), pixel_hw=pixel_hw, device=device,
                                          dtype=dtype, negative=True)
    total = len(sigmas) - 1
    last_denoised: list[torch.Tensor] = []

    def callback(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
        last_denoised[:] = [denoised]
        if run.progress is not None:
            run.progress(i + 1, total, preview_image(denoised, model.family) if run.previews else None)

    max_sigma = float(ms.sigma_max)
    max_denoise = math.isclose(max_sigma, float(sigmas[0]), rel_tol=1e-05) or float(sigmas[0]) > max_sigma
    with patched_denoiser(model, device, dtype) as module:
        adapter = G.make_denoiser(model, module)
        _check_channels(adapter, raw, model, max((p.concat.shape[1] for p in positive if p.concat is not None),
                                                 default=0))
        denoiser = Denoiser(ms, adapter, positive, negative, req.cfg, dtype, run.check_interrupted)
        if mask is not None:
            denoiser.mask, denoiser.latent = mask, latent
            denoiser.inpaint_noise = noise
            if req.sampler in RANDOM_INPAINT_NOISE:
                denoiser.inpaint_noise = initial_noise(raw.shape, req.seed + 1).to(device)
        x = ms.noise_scaling(sigmas[0], noise, latent, max_denoise)
        env = SamplerEnv(model_sampling=ms, seed=req.seed, callback=callback)
        x = SAMPLER_FUNCTIONS[req.sampler](denoiser, x, sigmas, env)
        x = ms.inverse_noise_scaling(sigmas[-1], x)

    out_latent = {k: v for k, v in req.latent.items() if k != "samples"}
    # contiguous: a masked blend can yield channels-last strides, and convolutions on those take
    # other kernels (1e-6 drift in the VAE decode)
    out_latent["samples"] = (x.float() / scale + shift).cpu().contiguous()
    denoised = dict(out_latent)
    if last_denoised:
        denoised["samples"] = (last_denoised[0].float() / scale + shift).cpu().contiguous()
    return SamplingResult(out_latent, denoised, total, sigmas.cpu())
