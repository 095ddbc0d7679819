"""Build diffusers/transformers modules from original-layout state dicts, with inferred configs.

Why: a user's ``.safetensors`` holds weights in the training code's layout and no config.  We infer
the config from shapes (configs.py), convert names with diffusers' own converters where they are
general (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``) and our own where they
are not (FLUX, OpenCLIP; keymaps.py), then instantiate without random init (accelerate's empty
weights) and load strictly, so a file with missing tensors is reported instead of silently
leaving random weights.  The same functions build a tiny test model and a full-size one.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from nodes.diffusion import configs, keymaps
from nodes.diffusion.model_files import ModelFileError, dequantize_scaled_fp8, strip_prefix
from nodes.diffusion.types import ModelFamily

log = logging.getLogger(__name__)


def _empty_init():
    try:
        from accelerate import init_empty_weights
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return contextlib.nullcontext()
    return init_empty_weights(include_buffers=False)


StorageOf = Callable[[torch.nn.Module], Mapping[str, torch.dtype]]
"""Given the empty model, the dtypes some of its tensors are *stored* in (e.g. fp8), by state-dict name."""


def _load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str, file_name: str,
                 dtype: torch.dtype, storage_of: StorageOf | None = None) -> torch.nn.Module:
    """Assign ``sd`` (cast to ``dtype``) to an empty-initialised model; every tensor must be present and fit.

    ``storage_of``: tensors it names are cast straight to their storage dtype instead (fp8 weights), so a
    full compute-dtype copy of them never exists while loading."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ModelFileError(f"{file_name}: the {what} is incomplete — {len(missing)} of {len(expected)} tensors are "
                             f"missing (e.g. {', '.join(missing[:3])}). The file may be damaged or of another model type.")
    bad = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise ModelFileError(f"{file_name}: the {what} has unexpected tensor shapes (e.g. {k}: {tuple(sd[k].shape)} "
                             f"instead of {tuple(expected[k].shape)})")
    stored = dict(storage_of(model)) if storage_of is not None else {}
    state = {}
    for k, ref in expected.items():
        if k not in sd:
            continue
        t = sd[k]
        target = stored.get(k) or (dtype if ref.dtype.is_floating_point else ref.dtype)
        state[k] = t.to(dtype=target) if t.dtype != target else t
    model.load_state_dict(state, strict=False, assign=True)
    # anything left on the meta device (tied/ignored weights) is an error in the making
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise ModelFileError(f"{file_name}: the {what} has no weights for {name}")
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class Blueprint:
    """A module to build, before any weight is assigned: why separate — the GGUF loader
    (``nodes.quantize.gguf``) assigns the same converted state differently (quantized Linear/Conv
    weights stay quantized), so config inference and name conversion live in one place.

    ``make()`` returns the module with empty (meta) weights; ``state`` holds the converted tensors
    under the module's own names; ``what`` names the part in error messages.
    """

    make: Callable[[], torch.nn.Module]
    state: dict[str, Any]
    what: str

    def build(self, file_name: str, dtype: torch.dtype, storage_of: StorageOf | None = None) -> torch.nn.Module:
        """The module with ``state`` loaded strictly, floating tensors cast to ``dtype`` (see :func:`_load_strict`)."""
        return _load_strict(self.make(), self.state, self.what, file_name, dtype, storage_of)


def _empty(factory: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        with _empty_init():
            return factory()

    return make


# --- UNet (SD1.x / SDXL) ---------------------------------------------------------------------

def build_sd_unet(unet_sd: Mapping[str, torch.Tensor], family: ModelFamily, file_name: str,
                  dtype: torch.dtype = torch.float32, layout: str = "ldm", storage_of: StorageOf | None = None):
    """UNet2DConditionModel from an LDM/SGM (no prefix) or diffusers-layout state dict."""
    return sd_unet_blueprint(unet_sd, family, file_name, layout).build(file_name, dtype, storage_of)


def sd_unet_blueprint(unet_sd: Mapping[str, Any], family: ModelFamily, file_name: str,
                      layout: str = "ldm") -> Blueprint:
    """Config and diffusers-named state of an LDM/SGM or diffusers-layout UNet state dict.

    Tensors are renamed, never computed on (shapes are read): a tensor of ``unet_sd`` is the very
    object found under its new name, which lets callers pass stand-ins for quantized weights.
    """
    from diffusers import UNet2DConditionModel

    unet_sd = dequantize_scaled_fp8(dict(unet_sd))
    if layout == "diffusers":
        cfg = _infer_diffusers_unet_config(unet_sd, family)
        state = dict(unet_sd)
    else:
        try:
            cfg = configs.infer_sd_unet_config(unet_sd, family)
        except (KeyError, StopIteration, ValueError) as exc:
            raise ModelFileError(f"{file_name}: cannot read the UNet structure ({exc!s})") from exc
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        state = convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in unet_sd.items()}, cfg)
    return Blueprint(_empty(lambda: UNet2DConditionModel.from_config(cfg)), dict(state), "UNet")


def _infer_diffusers_unet_config(sd: Mapping[str, torch.Tensor], family: ModelFamily) -> dict:
    """Config of a diffusers-layout UNet state dict, via the LDM names (so one inference serves both)."""
    n_levels = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("down_blocks."))
    attn = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd) for i in range(n_levels))
    lpb = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("down_blocks.0.resnets."))
    probe = configs.sd_unet_config(family, block_out_channels=(1,) * n_levels, attention_levels=attn,
                                   layers_per_block=lpb, transformer_layers=(1,) * n_levels, cross_attention_dim=1,
                                   projection_class_embeddings_input_dim=1)
    names = keymaps.unet_diffusers_to_ldm(sd.keys(), probe)
    return configs.infer_sd_unet_config({names[k]: v for k, v in sd.items() if k in names}, family)


# --- FLUX transformer ------------------------------------------------------------------------

def build_flux_transformer(sd: Mapping[str, torch.Tensor], file_name: str, dtype: torch.dtype = torch.float32,
                           layout: str = "bfl", storage_of: StorageOf | None = None):
    """FluxTransformer2DModel from a BFL (no prefix) or diffusers-layout state dict (any size)."""
    from diffusers import FluxTransformer2DModel

    sd = dequantize_scaled_fp8(dict(sd))
    try:
        bfl = dict(sd) if layout == "bfl" else keymaps.flux_to_bfl_state_dict(sd)
        cfg = configs.infer_flux_config(bfl)
        state = keymaps.flux_from_bfl_state_dict(bfl) if layout == "bfl" else dict(sd)
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelFileError(f"{file_name}: cannot read the FLUX transformer ({exc!s})") from exc
    with _empty_init():
        model = FluxTransformer2DModel.from_config(cfg)
    return _load_strict(model, state, "FLUX transformer", file_name, dtype, storage_of)


# --- VAE -------------------------------------------------------------------------------------

def build_vae(vae_sd: Mapping[str, torch.Tensor], file_name: str, scaling_factor: float, shift_factor: float | None,
              dtype: torch.dtype = torch.float32, layout: str = "ldm"):
    """AutoencoderKL from an LDM/BFL (no prefix) or diffusers-layout VAE state dict."""
    from diffusers import AutoencoderKL

    try:
        if layout == "diffusers":
            probe = configs.vae_config(block_out_channels=(1,) * (1 + max(int(k.split(".")[2]) for k in vae_sd
                                                                           if k.startswith("encoder.down_blocks."))),
                                       layers_per_block=1, latent_channels=1, scaling_factor=1.0)
            ldm = keymaps.vae_to_ldm_state_dict(vae_sd, probe)
            cfg = configs.infer_vae_config(ldm, scaling_factor, shift_factor)
            state = dict(vae_sd)
        else:
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            cfg = configs.infer_vae_config(vae_sd, scaling_factor, shift_factor)
            state = convert_ldm_vae_checkpoint(dict(vae_sd), cfg)
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelFileError(f"{file_name}: cannot read the VAE ({exc!s})") from exc
    with _empty_init():
        model = AutoencoderKL.from_config(cfg)
    return _load_strict(model, state, "VAE", file_name, dtype)


# --- text encoders ---------------------------------------------------------------------------

_CLIP_IGNORED = ("position_ids", "logit_scale")


def clip_state_dict(sd: Mapping[str, torch.Tensor], prefix: str, layout: str) -> dict[str, torch.Tensor]:
    """Canonical transformers CLIP keys (``text_model.*``) for an encoder stored under ``prefix``."""
    sub = strip_prefix(sd, prefix)
    if layout == "openclip":
        return keymaps.hf_from_openclip(sub)
    return {k: v for k, v in keymaps.hf_clip_canonical(sub).items() if not k.endswith(_CLIP_IGNORED)}


def build_clip(canonical: Mapping[str, torch.Tensor], kind: str, file_name: str, dtype: torch.dtype = torch.float32):
    """CLIPTextModel (clip_l) or CLIPTextModelWithProjection (clip_g) from canonical keys."""
    return clip_blueprint(canonical, kind, file_name).build(file_name, dtype)


def clip_blueprint(canonical: Mapping[str, Any], kind: str, file_name: str) -> Blueprint:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    try:
        cfg = CLIPTextConfig(**configs.infer_clip_config(canonical, kind))
    except KeyError as exc:
        raise ModelFileError(f"{file_name}: the {kind} text encoder is incomplete (no {exc})") from exc
    if kind == "clip_g":
        cls = CLIPTextModelWithProjection
        state = dict(canonical)
        if "text_projection.weight" not in state:
            raise ModelFileError(f"{file_name}: the CLIP-G text encoder has no text_projection")
    else:
        cls = CLIPTextModel
        state = {k: v for k, v in canonical.items() if not k.startswith("text_projection")}
    with _empty_init():  # on the meta device: costs no memory
        flattened = not hasattr(cls(cfg), "text_model")  # transformers >= 5.6 flattened CLIPTextModel
    if flattened:
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    return Blueprint(_empty(lambda: cls(cfg)), state, f"{kind.upper().replace('_', '-')} text encoder")


def build_t5(sd: Mapping[str, torch.Tensor], file_name: str, dtype: torch.dtype = torch.float32):
    """T5EncoderModel from ``shared.weight`` + ``encoder.*`` (as t5xxl_fp16.safetensors stores them)."""
    return t5_blueprint(sd, file_name).build(file_name, dtype)


def t5_blueprint(sd: Mapping[str, Any], file_name: str) -> Blueprint:
    from transformers import T5Config, T5EncoderModel

    state = dequantize_scaled_fp8(dict(sd))
    if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    if "shared.weight" in state:
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    try:
        cfg = T5Config(**configs.infer_t5_config(state))
    except KeyError as exc:
        raise ModelFileError(f"{file_name}: the T5 text encoder is incomplete (no {exc})") from exc
    return Blueprint(_empty(lambda: T5EncoderModel(cfg)), state, "T5 text encoder")


def build_encoder(sd: Mapping[str, torch.Tensor], kind: str, prefix: str, layout: str, file_name: str,
                  dtype: torch.dtype = torch.float32) -> Any:
    return encoder_blueprint(sd, kind, prefix, layout, file_name).build(file_name, dtype)


def encoder_blueprint(sd: Mapping[str, Any], kind: str, prefix: str, layout: str, file_name: str) -> Blueprint:
    if kind == "t5xxl":
        return t5_blueprint(strip_prefix(sd, prefix), file_name)
    return clip_blueprint(clip_state_dict(sd, prefix, layout), kind, file_name)
