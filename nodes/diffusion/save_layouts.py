"""MODEL / CLIP / VAE values back to the single-file layouts users share (the inverse of single_file.py).

SD1.5/SDXL UNets go to LDM/SGM names (``model.diffusion_model.*``), FLUX transformers to BFL names,
VAEs to LDM names (``first_stage_model.*``, FLUX ``vae.*``), CLIP-L to transformers names, CLIP-G to
OpenCLIP names inside SDXL checkpoints, T5 as ``t5xxl_fp16.safetensors`` holds it.  LoRA patches and
merges are applied while the tensors are taken (copies, so the loaded model stays unpatched).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from nodes.diffusion import keymaps
from nodes.diffusion.lora import apply_patches
from nodes.diffusion.model_patches import patched_weights
from nodes.diffusion.types import DiffusionModel, ModelFamily, TextEncoders, VaeModel

CLIP_PREFIXES = {
    ModelFamily.SD15: {"clip_l": "cond_stage_model.transformer."},
    ModelFamily.SDXL: {"clip_l": "conditioner.embedders.0.transformer.", "clip_g": "conditioner.embedders.1.model."},
    ModelFamily.SDXL_REFINER: {"clip_g": "conditioner.embedders.0.model."},
    ModelFamily.FLUX_DEV: {"clip_l": "text_encoders.clip_l.transformer.", "t5xxl": "text_encoders.t5xxl.transformer."},
    ModelFamily.FLUX_SCHNELL: {"clip_l": "text_encoders.clip_l.transformer.",
                               "t5xxl": "text_encoders.t5xxl.transformer."},
}


def _state(module: torch.nn.Module, patched: bool) -> dict[str, torch.Tensor]:
    # patched weights are restored when the context exits: copy them; unpatched ones are shared
    return {k: (v.detach().clone() if patched else v.detach()) for k, v in module.state_dict().items()}


def model_tensors(model: DiffusionModel, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    patched = bool(model.patches or model.merges)
    with patched_weights(model) as module:
        sd = _state(module, patched)
        config = module.config
    if model.family.is_flux:
        sd = keymaps.flux_to_bfl_state_dict(sd)
        return {prefix + k: v for k, v in sd.items()}
    names = keymaps.unet_diffusers_to_ldm(sd.keys(), config)
    missing = [k for k in sd if k not in names]
    if missing:
        raise ValueError(f"no LDM name for UNet tensors {missing[:3]}")
    return {prefix + names[k]: v for k, v in sd.items()}


@contextlib.contextmanager
def _patched_encoder(clip: TextEncoders, kind: str) -> Iterator[torch.nn.Module]:
    with apply_patches(clip.encoders[kind], clip.patches, prefix=kind + "."):
        yield clip.encoders[kind]


def encoder_tensors(clip: TextEncoders, kind: str, openclip: bool = False) -> dict[str, torch.Tensor]:
    with _patched_encoder(clip, kind) as encoder:
        sd = _state(encoder, bool(clip.patches))
    if kind == "t5xxl":
        return {k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}
    canonical = keymaps.hf_clip_canonical(sd)
    return keymaps.openclip_from_hf(canonical) if openclip else canonical


def clip_tensors(clip: TextEncoders | None, in_checkpoint: bool = True) -> dict[str, torch.Tensor]:
    """The text encoders under the checkpoint prefixes of their family."""
    if clip is None:
        return {}
    prefixes = CLIP_PREFIXES[clip.family]
    out: dict[str, torch.Tensor] = {}
    for kind in clip.encoders:
        prefix = prefixes.get(kind)
        if prefix is None:
            raise ValueError(f"a {clip.family.value} checkpoint has no place for a {kind} text encoder")
        out.update({prefix + k: v for k, v in encoder_tensors(clip, kind, openclip=prefix.endswith(".model.")).items()})
    return out


def clip_files(clip: TextEncoders) -> dict[str, dict[str, torch.Tensor]]:
    """{kind: tensors} as separate text-encoder files (text_encoders/ layout)."""
    return {kind: encoder_tensors(clip, kind) for kind in clip.encoders}


def vae_tensors(vae: VaeModel | None, family: ModelFamily | None, prefix: str | None = None) -> dict[str, torch.Tensor]:
    if vae is None:
        return {}
    if prefix is None:
        prefix = "vae." if (family is not None and family.is_flux) else "first_stage_model."
    module = vae.vae
    sd = keymaps.vae_to_ldm_state_dict(_state(module, False), module.config)
    return {prefix + k: v for k, v in sd.items()}
