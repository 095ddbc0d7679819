"""diffusers/transformers configs for every family, built from a handful of numbers or inferred from tensors.

Why: users' single-file checkpoints carry no config, and we cannot fetch one from the hub.  Shapes
give almost everything (channels, block counts, attention layout, context and pooled widths); the
few values shapes cannot give — attention heads, activation functions, latent scaling — follow the
family's published configs as *rules* (e.g. "SDXL and CLIP use 64-wide heads", "SD1.x uses 8
heads") instead of hard-coded full-size configs.  The tiny test models are built from these same
functions with tiny numbers, so inference and construction can never disagree, and the same code
path loads a 4 MB tiny file and a 7 GB real one.

Inference functions take an *unprefixed* state dict in the original layout (LDM UNet keys, LDM VAE
keys, canonical transformers CLIP keys, T5 keys, BFL FLUX keys) and return a plain config dict.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from nodes.diffusion.types import ModelFamily

# --- scheduler settings of the real families (diffusers scheduler configs) ------------------

SD_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
    "sample_max_value": 1.0,
}
FLUX_DEV_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
FLUX_SCHNELL_SCHEDULER = {**FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}


def scheduler_config(family: ModelFamily, prediction_type: str = "epsilon") -> dict:
    """The diffusers scheduler config a family was trained with (a fresh dict)."""
    if family is ModelFamily.FLUX_DEV:
        return dict(FLUX_DEV_SCHEDULER)
    if family is ModelFamily.FLUX_SCHNELL:
        return dict(FLUX_SCHNELL_SCHEDULER)
    return {**SD_SCHEDULER, "prediction_type": prediction_type}


# latent normalisation of each family's VAE (diffusers `scaling_factor`/`shift_factor`)
VAE_LATENT_FORMAT = {
    ModelFamily.SD15: (0.18215, 0.0),
    ModelFamily.SDXL: (0.13025, 0.0),
    ModelFamily.SDXL_REFINER: (0.13025, 0.0),
    ModelFamily.FLUX_DEV: (0.3611, 0.1159),
    ModelFamily.FLUX_SCHNELL: (0.3611, 0.1159),
}

SDXL_TIME_EMBED_DIM = 256  # addition_time_embed_dim of SDXL base and refiner


# --- builders: a config from a few numbers --------------------------------------------------

def sd_unet_config(family: ModelFamily, *, block_out_channels: tuple[int, ...], attention_levels: tuple[bool, ...],
                   layers_per_block: int, transformer_layers: tuple[int, ...], cross_attention_dim: int,
                   in_channels: int = 4, out_channels: int = 4, use_linear_projection: bool | None = None,
                   projection_class_embeddings_input_dim: int | None = None, sample_size: int | None = None) -> dict:
    """A UNet2DConditionModel config for SD1.x or SDXL in the family's conventions.

    Heads: SD1.x uses 8 heads per attention (diffusers' legacy ``attention_head_dim=8``); SDXL
    uses 64-wide heads (``channels // 64``, at least 1).
    """
    n = len(block_out_channels)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
    cfg: dict = {
        "sample_size": sample_size or (128 if family.is_sdxl else 64),
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": tuple(block_out_channels),
        "layers_per_block": layers_per_block,
        "cross_attention_dim": cross_attention_dim,
        "norm_num_groups": 32,
        "transformer_layers_per_block": tuple(transformer_layers) if family.is_sdxl else 1,
    }
    if family.is_sdxl:
        cfg["attention_head_dim"] = tuple(max(1, c // 64) for c in block_out_channels)
        cfg["use_linear_projection"] = True if use_linear_projection is None else use_linear_projection
        cfg["addition_embed_type"] = "text_time"
        cfg["addition_time_embed_dim"] = SDXL_TIME_EMBED_DIM
        cfg["addition_embed_type_num_heads"] = 64
        cfg["projection_class_embeddings_input_dim"] = projection_class_embeddings_input_dim
    else:
        cfg["attention_head_dim"] = 8
        cfg["use_linear_projection"] = bool(use_linear_projection)
        if n and len(set(transformer_layers)) > 1:
            cfg["transformer_layers_per_block"] = tuple(transformer_layers)
    return cfg


def vae_config(*, block_out_channels: tuple[int, ...], layers_per_block: int, latent_channels: int,
               scaling_factor: float, shift_factor: float | None = None, use_quant_conv: bool = True,
               in_channels: int = 3, out_channels: int = 3) -> dict:
    """An AutoencoderKL config (down factor = 2 ** (levels - 1))."""
    n = len(block_out_channels)
    cfg = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": ("DownEncoderBlock2D",) * n,
        "up_block_types": ("UpDecoderBlock2D",) * n,
        "block_out_channels": tuple(block_out_channels),
        "layers_per_block": layers_per_block,
        "latent_channels": latent_channels,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": scaling_factor,
        "use_quant_conv": use_quant_conv,
        "use_post_quant_conv": use_quant_conv,
    }
    if shift_factor is not None:
        cfg["shift_factor"] = shift_factor
    return cfg


def clip_config(kind: str, *, vocab_size: int, hidden_size: int, intermediate_size: int, num_layers: int,
                max_position_embeddings: int = 77, projection_dim: int | None = None) -> dict:
    """A CLIPTextConfig dict; ``kind`` "clip_l" (OpenAI, quick_gelu) or "clip_g" (OpenCLIP bigG, gelu).

    Heads are 64 wide (CLIP-L 768/12, CLIP-G 1280/20), at least one.
    """
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": max(1, hidden_size // 64),
        "max_position_embeddings": max_position_embeddings,
        "hidden_act": "quick_gelu" if kind == "clip_l" else "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": projection_dim or hidden_size,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }


def t5_config(*, vocab_size: int, d_model: int, d_ff: int, num_layers: int, num_heads: int, d_kv: int,
              relative_attention_num_buckets: int = 32, gated: bool = True) -> dict:
    """A T5Config dict in T5 v1.1 (FLUX's T5-XXL) conventions."""
    return {
        "vocab_size": vocab_size,
        "d_model": d_model,
        "d_ff": d_ff,
        "d_kv": d_kv,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "relative_attention_num_buckets": relative_attention_num_buckets,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": False,
        "is_encoder_decoder": False,
        "use_cache": False,
    }


def flux_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes for a FLUX head width: (16, 56, 56) for the real 128; the same 7/16 split, even, otherwise."""
    a = int(round(head_dim * 7 / 16))
    a -= a % 2
    return (head_dim - 2 * a, a, a)


def flux_transformer_config(*, in_channels: int, num_layers: int, num_single_layers: int, head_dim: int,
                            num_heads: int, joint_attention_dim: int, pooled_projection_dim: int,
                            guidance_embeds: bool, out_channels: int | None = None) -> dict:
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": out_channels if out_channels not in (None, in_channels) else None,
        "num_layers": num_layers,
        "num_single_layers": num_single_layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": num_heads,
        "joint_attention_dim": joint_attention_dim,
        "pooled_projection_dim": pooled_projection_dim,
        "guidance_embeds": guidance_embeds,
        "axes_dims_rope": flux_rope_axes(head_dim),
    }


# --- inference: a config from the tensors of a file ----------------------------------------

def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {m.group(1) for k in keys if (m := rx.match(k))}
    return len(found)


def infer_sd_unet_config(sd: Mapping[str, torch.Tensor], family: ModelFamily) -> dict:
    """Config of an LDM/SGM UNet state dict (keys without ``model.diffusion_model.``)."""
    keys = list(sd.keys())
    in_ch = sd["input_blocks.0.0.weight"].shape[1]
    out_ch = sd["out.2.weight"].shape[0]
    n_input = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("input_blocks."))
    downs = sorted(int(k.split(".")[1]) for k in keys if re.match(r"input_blocks\.\d+\.0\.op\.weight$", k))
    levels = len(downs) + 1
    # blocks per level: input blocks between downsamplers
    bounds = [0] + downs + [n_input]
    lpb = bounds[1] - bounds[0] - 1
    channels, attn, tlayers = [], [], []
    for lvl in range(levels):
        first = bounds[lvl] + 1
        last_resnet = bounds[lvl + 1] - 1
        channels.append(sd[f"input_blocks.{last_resnet}.0.out_layers.3.weight"].shape[0])
        has_attn = f"input_blocks.{first}.1.proj_in.weight" in sd
        attn.append(has_attn)
        tlayers.append(_count(keys, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.") if has_attn else 1)
    ctx_key = next(k for k in keys if k.endswith("attn2.to_k.weight"))
    cross = sd[ctx_key].shape[1]
    proj_in = next(k for k in keys if k.endswith(".proj_in.weight"))
    linear = sd[proj_in].ndim == 2
    adm = sd["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in sd else None
    return sd_unet_config(family, block_out_channels=tuple(channels), attention_levels=tuple(attn),
                          layers_per_block=lpb, transformer_layers=tuple(tlayers), cross_attention_dim=cross,
                          in_channels=in_ch, out_channels=out_ch, use_linear_projection=linear,
                          projection_class_embeddings_input_dim=adm)


def infer_vae_config(sd: Mapping[str, torch.Tensor], scaling_factor: float, shift_factor: float | None) -> dict:
    """Config of an LDM/BFL VAE state dict (keys ``encoder.*``/``decoder.*``, no prefix)."""
    keys = list(sd.keys())
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    lpb = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = tuple(sd[f"encoder.down.{i}.block.{lpb - 1}.conv2.weight"].shape[0] for i in range(levels))
    return vae_config(block_out_channels=channels, layers_per_block=lpb,
                      latent_channels=sd["decoder.conv_in.weight"].shape[1], scaling_factor=scaling_factor,
                      shift_factor=shift_factor, use_quant_conv="quant_conv.weight" in sd,
                      in_channels=sd["encoder.conv_in.weight"].shape[1],
                      out_channels=sd["decoder.conv_out.weight"].shape[0])


def infer_clip_config(sd: Mapping[str, torch.Tensor], kind: str) -> dict:
    """Config of a canonical transformers CLIP text state dict (``text_model.*``)."""
    emb = sd["text_model.embeddings.token_embedding.weight"]
    layers = _count(sd.keys(), r"text_model\.encoder\.layers\.(\d+)\.")
    proj = sd.get("text_projection.weight")
    return clip_config(kind, vocab_size=emb.shape[0], hidden_size=emb.shape[1],
                       intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0], num_layers=layers,
                       max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
                       projection_dim=None if proj is None else proj.shape[0])


def infer_t5_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """Config of a T5 encoder state dict (transformers names: ``shared``, ``encoder.block.N…``)."""
    emb = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    wi = sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight" if gated else "encoder.block.0.layer.1.DenseReluDense.wi.weight"]
    rel = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = rel.shape[1]
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    return t5_config(vocab_size=emb.shape[0], d_model=emb.shape[1], d_ff=wi.shape[0],
                     num_layers=_count(sd.keys(), r"encoder\.block\.(\d+)\."), num_heads=heads, d_kv=inner // heads,
                     relative_attention_num_buckets=rel.shape[0], gated=gated)


def infer_flux_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """Config of a BFL FLUX transformer state dict (keys without ``model.diffusion_model.``)."""
    from nodes.diffusion.keymaps import flux_counts_bfl

    nd, ns = flux_counts_bfl(sd.keys())
    hidden, in_ch = sd["img_in.weight"].shape
    norm_key = "double_blocks.0.img_attn.norm.query_norm.scale" if nd else "single_blocks.0.norm.query_norm.scale"
    head_dim = sd[norm_key].shape[0]
    out_ch = sd["final_layer.linear.weight"].shape[0]
    return flux_transformer_config(in_channels=in_ch, num_layers=nd, num_single_layers=ns, head_dim=head_dim,
                                   num_heads=hidden // head_dim, joint_attention_dim=sd["txt_in.weight"].shape[1],
                                   pooled_projection_dim=sd["vector_in.in_layer.weight"].shape[1],
                                   guidance_embeds="guidance_in.in_layer.weight" in sd, out_channels=out_ch)
