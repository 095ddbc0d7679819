"""The values that flow between diffusion nodes (ComfyUI's MODEL, CLIP, VAE, CONDITIONING, LATENT).

Conventions (kept from ComfyUI so shared workflows mean the same thing here):

* ``LATENT`` is a dict: ``{"samples": Tensor[B, C, H/8, W/8]}`` in the VAE's *raw* latent space
  (before ``scaling_factor``/``shift_factor``; sampling applies them), optionally
  ``"noise_mask": Tensor[B|1, 1, H, W]`` (1 = repaint) and ``"batch_index": list[int]``.
* ``CONDITIONING`` is a list of :class:`CondEntry` — one per prompt area/strength
  (ConditioningCombine concatenates lists; ConditioningSet* copy entries with new options).
* ``IMAGE`` is ``Tensor[B, H, W, C]`` float 0..1, ``MASK`` is ``Tensor[B, H, W]``.
* MODEL/CLIP/VAE objects are immutable values holding a model handle (``weights``) owned by the
  model manager, never the modules themselves: the output cache does not pin memory, and
  ``/free`` or an eviction really releases it.  Nodes that patch them (LoRA, CLIPSetLastLayer,
  ModelSamplingFlux) return a copy via ``dataclasses.replace`` sharing the handle, so a base
  model stays loaded once across LoRA changes and patches are applied at sampling time.
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


@dataclass(frozen=True, init=False)
class DiffusionModel:
    """MODEL: the denoiser (UNet2DConditionModel or FluxTransformer2DModel) and how to sample it.

    ``weights`` is a model handle (:class:`graph_runtime.model_manager.ModelHandle`) owned by the
    model manager, so this value — kept in the output cache, shared by LoRA copies — never pins
    the denoiser's memory; ``denoiser`` loads it back if it was evicted.  Constructing with
    ``denoiser=<module>`` (tests, tools) wraps the module in a :class:`Resident` ref.
    """

    family: ModelFamily
    weights: Any = field(hash=False, compare=False)   # ModelRef whose get() is the denoiser module
    prediction_type: str = "epsilon"   # "epsilon" | "v_prediction" | "flow"
    scheduler_config: dict = field(default_factory=dict, hash=False, compare=False)  # diffusers scheduler config
    source: str = ""                  # file or folder it came from
    patches: tuple[WeightPatch, ...] = ()
    sampling: dict = field(default_factory=dict, hash=False, compare=False)  # e.g. {"shift": 1.15, "max_shift":…}
    merges: tuple = ()                # (other DiffusionModel, ratio) pairs from ModelMergeSimple
    # The VAE latent normalisation the denoiser was trained with (model space = (raw - shift) * scale).
    # None = the family default (SD1.5 0.18215; SDXL 0.13025; FLUX 0.3611 / 0.1159).  Loaders set
    # these from the checkpoint's VAE config so non-standard VAEs (and tiny test models) round-trip.
    latent_scale: float | None = None
    latent_shift: float | None = None
    quantization: str = "none"        # how the weights are stored (nodes.quantize.capabilities names)

    def __init__(self, family: ModelFamily, denoiser: Any = None, prediction_type: str = "epsilon",
                 scheduler_config: dict | None = None, source: str = "", patches: tuple = (),
                 sampling: dict | None = None, merges: tuple = (), latent_scale: float | None = None,
                 latent_shift: float | None = None, quantization: str = "none", *, weights: Any = None) -> None:
        _init(self, family=family, weights=_ref(weights, denoiser, "denoiser"), prediction_type=prediction_type,
              scheduler_config=dict(scheduler_config or {}), source=source, patches=tuple(patches),
              sampling=dict(sampling or {}), merges=tuple(merges), latent_scale=latent_scale,
              latent_shift=latent_shift, quantization=quantization)

    @property
    def denoiser(self) -> "torch.nn.Module":
        """The loaded denoiser (reloaded if the manager evicted it)."""
        return self.weights.get()

    def with_patch(self, patch: WeightPatch) -> "DiffusionModel":
        return replace(self, patches=self.patches + (patch,))

    def working_memory(self, inputs: dict) -> tuple[str, int] | None:
        """(device, bytes) of activations a node sampling this model with ``inputs`` needs (a LATENT among
        them); the model manager reserves it before the node runs."""
        from nodes.devices import sampler_working_memory

        return sampler_working_memory(self, inputs)

    def model_handles(self) -> tuple:
        """Every model handle this value needs at sampling time (its own and merged models')."""
        return _handles(self.weights) + tuple(h for other, _ in self.merges for h in other.model_handles())


@dataclass(frozen=True, init=False)
class TextEncoders:
    """CLIP: the text encoders and tokenizers of a family.

    ``encoders`` (loaded through the ``weights`` handle) and ``tokenizers`` keys: "clip_l",
    "clip_g", "t5xxl".  ``clip_skip`` is ComfyUI's ``stop_at_clip_layer`` (-1 = last layer).
    """

    family: ModelFamily
    weights: Any = field(hash=False, compare=False)   # ModelRef whose get() is {kind: encoder module}
    tokenizers: dict = field(default_factory=dict, hash=False, compare=False)
    clip_skip: int = -1
    patches: tuple[WeightPatch, ...] = ()
    source: str = ""
    quantization: str = "none"

    def __init__(self, family: ModelFamily, encoders: Any = None, tokenizers: dict | None = None,
                 clip_skip: int = -1, patches: tuple = (), source: str = "", quantization: str = "none", *,
                 weights: Any = None) -> None:
        _init(self, family=family, weights=_ref(weights, encoders, "encoders"), tokenizers=dict(tokenizers or {}),
              clip_skip=clip_skip, patches=tuple(patches), source=source, quantization=quantization)

    @property
    def encoders(self) -> dict:
        """{kind: loaded encoder module} (reloaded if the manager evicted them)."""
        return self.weights.get()

    def model_handles(self) -> tuple:
        return _handles(self.weights)


@dataclass(frozen=True, init=False)
class VaeModel:
    """VAE: an AutoencoderKL (through the ``weights`` handle) with its latent normalisation."""

    weights: Any = field(hash=False, compare=False)   # ModelRef whose get() is the AutoencoderKL
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    latent_channels: int = 4
    downscale: int = 8
    source: str = ""

    def __init__(self, vae: Any = None, scaling_factor: float = 0.18215, shift_factor: float = 0.0,
                 latent_channels: int = 4, downscale: int = 8, source: str = "", *, weights: Any = None) -> None:
        _init(self, weights=_ref(weights, vae, "vae"), scaling_factor=scaling_factor, shift_factor=shift_factor,
              latent_channels=latent_channels, downscale=downscale, source=source)

    @property
    def vae(self) -> "torch.nn.Module":
        """The loaded AutoencoderKL (reloaded if the manager evicted it)."""
        return self.weights.get()

    def model_handles(self) -> tuple:
        return _handles(self.weights)


def _init(obj: Any, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _ref(weights: Any, module: Any, name: str) -> Any:
    """The weights ref from either constructor form (a handle, or a plain module/dict wrapped)."""
    from graph_runtime.model_manager import as_ref

    if weights is not None and module is not None:
        raise TypeError(f"pass either weights= or {name}=, not both")
    ref = as_ref(weights if weights is not None else module)
    if ref is None:
        raise TypeError(f"missing the {name} (weights=) argument")
    return ref


def _handles(ref: Any) -> tuple:
    fn = getattr(ref, "model_handles", None)
    return tuple(fn()) if callable(fn) else ()


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

    def model_handles(self) -> tuple:
        """Handles of the models this entry needs at sampling time (its ControlNet chain)."""
        from graph_runtime.model_manager import model_handles_in

        return tuple(model_handles_in(self.options.get("control")))


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
