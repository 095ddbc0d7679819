"""The values that flow between diffusion nodes (ComfyUI's MODEL, CLIP, VAE, CONDITIONING, LATENT).

Conventions (kept from ComfyUI so shared workflows mean the same thing here):

* ``LATENT`` is a dict: ``{"samples": Tensor[B, C, H/8, W/8]}`` in the VAE's *raw* latent space
  (before ``scaling_factor``/``shift_factor``; sampling applies them), optionally
  ``"noise_mask": Tensor[B|1, 1, H, W]`` (1 = repaint) and ``"batch_index": list[int]``.
* ``CONDITIONING`` is a list of :class:`CondEntry` — one per prompt area/strength
  (ConditioningCombine concatenates lists; ConditioningSet* copy entries with new options).
* ``IMAGE`` is ``Tensor[B, H, W, C]`` float 0..1, ``MASK`` is ``Tensor[B, H, W]``.
* MODEL/CLIP/VAE objects are immutable handles: nodes that patch them (LoRA, CLIPSetLastLayer,
  ModelSamplingFlux) return a copy via ``dataclasses.replace`` sharing the loaded weights, so a
  base model stays resident across LoRA changes and patches are applied at sampling time.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the code that builds these values, not at start-up
    import torch


class ModelFamily(str, enum.Enum):
    SD15 = "sd15"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"
    FLUX_DEV = "flux_dev"        # guidance-distilled FLUX (guidance_embeds=True)
    FLUX_SCHNELL = "flux_schnell"  # timestep-distilled FLUX (no guidance embedding)

    @property
    def is_flux(self) -> bool:
        return self in (ModelFamily.FLUX_DEV, ModelFamily.FLUX_SCHNELL)

    @property
    def is_sdxl(self) -> bool:
        return self in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER)


@dataclass(frozen=True)
class WeightPatch:
    """A low-rank or full weight delta applied to a module's parameters at sampling/encode time.

    ``deltas`` maps a diffusers parameter name (e.g. ``down_blocks.0.attentions.0...to_q.weight``)
    to a callable-free description: (up, down, alpha) for LoRA, or a full tensor delta.
    """

    name: str               # file name, for errors and cache keys
    strength: float
    deltas: dict[str, Any] = field(hash=False, compare=False)


@dataclass(frozen=True)
class DiffusionModel:
    """MODEL: the denoiser (UNet2DConditionModel or FluxTransformer2DModel) and how to sample it."""

    family: ModelFamily
    denoiser: torch.nn.Module = field(hash=False, compare=False)
    prediction_type: str              # "epsilon" | "v_prediction" | "flow"
    scheduler_config: dict = field(hash=False, compare=False)  # diffusers scheduler config of this model
    source: str = ""                  # file or folder it came from
    patches: tuple[WeightPatch, ...] = ()
    sampling: dict = field(default_factory=dict, hash=False, compare=False)  # e.g. {"shift": 1.15, "max_shift":…}
    merges: tuple = ()                # (other DiffusionModel, ratio) pairs from ModelMergeSimple
    # The VAE latent normalisation the denoiser was trained with (model space = (raw - shift) * scale).
    # None = the family default (SD1.5 0.18215; SDXL 0.13025; FLUX 0.3611 / 0.1159).  Loaders set
    # these from the checkpoint's VAE config so non-standard VAEs (and tiny test models) round-trip.
    latent_scale: float | None = None
    latent_shift: float | None = None

    def with_patch(self, patch: WeightPatch) -> "DiffusionModel":
        return replace(self, patches=self.patches + (patch,))


@dataclass(frozen=True)
class TextEncoders:
    """CLIP: the text encoders and tokenizers of a family.

    ``encoders``/``tokenizers`` keys: "clip_l", "clip_g", "t5xxl".  ``clip_skip`` is ComfyUI's
    ``stop_at_clip_layer`` (-1 = last layer).
    """

    family: ModelFamily
    encoders: dict = field(hash=False, compare=False)
    tokenizers: dict = field(hash=False, compare=False)
    clip_skip: int = -1
    patches: tuple[WeightPatch, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class VaeModel:
    """VAE: an AutoencoderKL with its latent normalisation."""

    vae: torch.nn.Module = field(hash=False, compare=False)
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    latent_channels: int = 4
    downscale: int = 8
    source: str = ""


@dataclass(frozen=True)
class CondEntry:
    """One conditioning entry: token embeddings plus options.

    options keys used by the samplers (all optional): ``pooled_output`` (Tensor), ``guidance``
    (FLUX), ``area`` ((h, w, y, x) in latent pixels ×8 as ComfyUI), ``strength``, ``set_area_to_bounds``,
    ``start_percent``/``end_percent`` (timestep range), ``mask``, ``mask_strength``,
    ``control`` (a ControlNet application chain, see nodes/diffusion/controlnet), ``concat_latent_image``
    (InstructPix2Pix-style extra channels).
    """

    embeds: torch.Tensor = field(hash=False, compare=False)
    options: dict = field(default_factory=dict, hash=False, compare=False)

    def with_options(self, **updates: Any) -> "CondEntry":
        return CondEntry(self.embeds, {**self.options, **updates})


Conditioning = list[CondEntry]
Latent = dict[str, Any]


class ControlHook:
    """What a CONDITIONING entry's ``options["control"]`` holds: adds ControlNet residuals.

    The sampler calls :meth:`residuals` once per denoiser call for the batch rows that use this
    entry, and passes the returned dict as extra keyword arguments to the denoiser:
    UNet — ``down_block_additional_residuals`` / ``mid_block_additional_residual``;
    FLUX — ``controlnet_block_samples`` / ``controlnet_single_block_samples``.
    Returning None means "not active at this step" (outside start/end percent or strength 0).
    Stacked ControlNets form a chain: each hook adds its ``previous`` hook's residuals to its own.
    """

    def residuals(self, *, family: ModelFamily, sample: torch.Tensor, timestep: torch.Tensor,
                  encoder_hidden_states: torch.Tensor, percent: float,
                  added_cond_kwargs: dict | None = None, flux_kwargs: dict | None = None) -> dict | None:
        raise NotImplementedError
