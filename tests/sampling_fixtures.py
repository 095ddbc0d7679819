"""Shared helpers for the sampling tests: tiny components wrapped as MODEL/CLIP/VAE values, node contexts.

The tiny components come from :mod:`models.tools.tiny_models` (the loader pack's builders), built
in memory; they are wrapped into DiffusionModel / TextEncoders / VaeModel the way the loaders do
(latent normalisation from the VAE config), so the diffusers pipelines can share the very same
modules in the parity tests.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch

from graph_runtime.context import NodeContext, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from nodes.diffusion.types import CondEntry, DiffusionModel, ModelFamily, TextEncoders, VaeModel


@dataclass
class Tiny:
    components: dict
    model: DiffusionModel
    vae: VaeModel
    clip: TextEncoders


def _wrap(components: dict, family: ModelFamily, prediction: str) -> Tiny:
    denoiser = components.get("unet") or components.get("transformer")
    vcfg = components["vae"].config
    shift = vcfg.get("shift_factor") or 0.0
    model = DiffusionModel(family=family, denoiser=denoiser, prediction_type=prediction,
                           scheduler_config=dict(components["scheduler"].config), source=f"tiny-{family.value}",
                           latent_scale=vcfg.scaling_factor, latent_shift=shift)
    downscale = 2 ** (len(vcfg.block_out_channels) - 1)
    vae = VaeModel(vae=components["vae"], scaling_factor=vcfg.scaling_factor, shift_factor=shift,
                   latent_channels=vcfg.latent_channels, downscale=downscale)
    second = "t5xxl" if family.is_flux else "clip_g"
    encoders, tokenizers = {"clip_l": components["text_encoder"]}, {"clip_l": components["tokenizer"]}
    if "text_encoder_2" in components:
        encoders[second], tokenizers[second] = components["text_encoder_2"], components["tokenizer_2"]
    clip = TextEncoders(family=family, encoders=encoders, tokenizers=tokenizers, source=f"tiny-{family.value}")
    return Tiny(components, model, vae, clip)


@functools.lru_cache(maxsize=None)
def sd15() -> Tiny:
    from models.tools.tiny_models import build_sd15

    return _wrap(build_sd15(), ModelFamily.SD15, "epsilon")


@functools.lru_cache(maxsize=None)
def sdxl() -> Tiny:
    from models.tools.tiny_models import build_sdxl

    return _wrap(build_sdxl(), ModelFamily.SDXL, "epsilon")


@functools.lru_cache(maxsize=None)
def flux(dev: bool) -> Tiny:
    from models.tools.tiny_models import build_flux

    return _wrap(build_flux(dev=dev), ModelFamily.FLUX_DEV if dev else ModelFamily.FLUX_SCHNELL, "flow")


def embeds(seed: int, length: int, dim: int) -> torch.Tensor:
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(1, length, dim, generator=g)


def sd_conds(tiny: Tiny, seed: int = 0) -> tuple[list[CondEntry], list[CondEntry]]:
    """Positive/negative conditioning with random embeddings of the model's cross-attention width."""
    dim = tiny.model.denoiser.config.cross_attention_dim
    extra_p: dict[str, Any] = {}
    extra_n: dict[str, Any] = {}
    if tiny.model.family.is_sdxl:
        pooled_dim = tiny.components["text_encoder_2"].config.projection_dim
        extra_p["pooled_output"] = embeds(seed + 2, 1, pooled_dim)[0]
        extra_n["pooled_output"] = embeds(seed + 3, 1, pooled_dim)[0]
    return [CondEntry(embeds(seed, 77, dim), extra_p)], [CondEntry(embeds(seed + 1, 77, dim), extra_n)]


def flux_conds(tiny: Tiny, seed: int = 0, guidance: float = 3.5) -> list[CondEntry]:
    cfg = tiny.model.denoiser.config
    pooled = embeds(seed + 1, 1, cfg.pooled_projection_dim)[0]
    return [CondEntry(embeds(seed, 16, cfg.joint_attention_dim), {"pooled_output": pooled, "guidance": guidance})]


def make_ctx(tmp_path, *, device: str = "cpu", dtype: str = "fp32", preview_method: str = "auto",
             progress: Callable | None = None, interrupted: Callable[[], bool] | None = None,
             class_type: str = "KSampler") -> NodeContext:
    paths = FolderPaths(tmp_path / "base")
    kwargs: dict[str, Any] = {}
    if progress is not None:
        kwargs["_progress"] = progress
    if interrupted is not None:
        kwargs["_interrupted"] = interrupted
    return NodeContext(node_id="1", class_type=class_type, prompt_id="p", paths=paths, models=ModelManager(),
                       options=RuntimeOptions(device=device, dtype=dtype, preview_method=preview_method), **kwargs)
