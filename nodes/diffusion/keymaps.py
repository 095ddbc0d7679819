"""Key maps between diffusers/transformers parameter names and the original (LDM/SGM/BFL/OpenCLIP) layouts.

Why this exists: users' ``.safetensors`` files use the original training-code layouts, while we run
diffusers/transformers modules.  diffusers ships only original→diffusers converters, and some of
them hard-code full-size shapes (the FLUX converter assumes ``inner_dim=3072``).  The maps here
are computed from a model *config* (block types, layers per block …), never from hard-coded SD1.5
block counts, so the same code serves a 2-block tiny UNet and SDXL.  They are used in both
directions: by the tiny-model writers (diffusers → original) and by LoRA loading (kohya names
are original-layout module names for SDXL and FLUX).

Every function returns plain ``{diffusers_name: original_name}`` dicts; tensors that must change
shape on the way (fused qkv, 1×1 conv attention, transposed projections) are handled by the
``to_original_*`` / ``from_original_*`` helpers.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

# --------------------------------------------------------------------------------------------
# UNet (SD1.x / SD2.x / SDXL): diffusers module paths <-> LDM/SGM ``model.diffusion_model`` paths

_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _per_block(value: int | Iterable[int], n: int) -> list[int]:
    return [int(value)] * n if isinstance(value, int) else [int(v) for v in value]


def unet_module_map(config: Mapping) -> dict[str, tuple[str, str]]:
    """diffusers UNet module prefix -> (LDM prefix, kind) where kind is "resnet", "attn" or "plain".

    Built from ``down_block_types``/``up_block_types``/``layers_per_block`` of a diffusers
    UNet2DConditionModel config, following the LDM numbering: ``input_blocks`` count resnets
    (and their attention) then one downsampler per non-final level; ``output_blocks`` have
    ``layers_per_block + 1`` resnets per level, the level's upsampler sitting in its last block.
    """
    down_types = list(config["down_block_types"])
    up_types = list(config["up_block_types"])
    n = len(down_types)
    lpb = _per_block(config.get("layers_per_block", 2), n)
    out: dict[str, tuple[str, str]] = {
        "time_embedding.linear_1": ("time_embed.0", "plain"),
        "time_embedding.linear_2": ("time_embed.2", "plain"),
        "add_embedding.linear_1": ("label_emb.0.0", "plain"),
        "add_embedding.linear_2": ("label_emb.0.2", "plain"),
        "class_embedding.linear_1": ("label_emb.0.0", "plain"),
        "class_embedding.linear_2": ("label_emb.0.2", "plain"),
        "conv_in": ("input_blocks.0.0", "plain"),
        "conv_norm_out": ("out.0", "plain"),
        "conv_out": ("out.2", "plain"),
        "mid_block.resnets.0": ("middle_block.0", "resnet"),
        "mid_block.attentions.0": ("middle_block.1", "attn"),
        "mid_block.resnets.1": ("middle_block.2", "resnet"),
    }
    idx = 1
    for i, btype in enumerate(down_types):
        has_attn = "CrossAttn" in btype
        for j in range(lpb[i]):
            out[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{idx}.0", "resnet")
            if has_attn:
                out[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{idx}.1", "attn")
            idx += 1
        if i < n - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{idx}.0.op", "plain")
            idx += 1
    lpb_up = list(reversed(lpb))
    idx = 0
    for i, btype in enumerate(up_types):
        has_attn = "CrossAttn" in btype
        layers = lpb_up[i] + 1
        for j in range(layers):
            out[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{idx}.0", "resnet")
            if has_attn:
                out[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{idx}.1", "attn")
            if j == layers - 1 and i < len(up_types) - 1:
                out[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{idx}.{2 if has_attn else 1}.conv", "plain")
            idx += 1
    return out


def _map_by_modules(name: str, modules: Mapping[str, tuple[str, str]], renames: Mapping[str, str]) -> str | None:
    """Map one dotted parameter/module name through a module-prefix table (longest prefix wins)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        hit = modules.get(prefix)
        if hit is None:
            continue
        target, kind = hit
        rest = parts[cut:]
        if kind == "resnet" and rest and rest[0] in renames:
            rest = renames[rest[0]].split(".") + rest[1:]
        return ".".join([target] + rest)
    return None


def unet_diffusers_to_ldm(names: Iterable[str], config: Mapping) -> dict[str, str]:
    """``{diffusers_name: ldm_name}`` for UNet parameter or module names (no ``model.diffusion_model.``)."""
    modules = unet_module_map(config)
    result = {}
    for name in names:
        mapped = _map_by_modules(name, modules, _RESNET_RENAMES)
        if mapped is not None:
            result[name] = mapped
    return result


# --------------------------------------------------------------------------------------------
# VAE (AutoencoderKL): diffusers <-> LDM ``first_stage_model`` / BFL ``ae`` layout

_VAE_RESNET_RENAMES = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTN_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_diffusers_to_ldm(names: Iterable[str], config: Mapping) -> dict[str, str]:
    """``{diffusers_name: ldm_name}`` for AutoencoderKL parameter names."""
    n_up = len(config["up_block_types"])
    result = {}
    for name in names:
        p = name.split(".")
        mapped: list[str] | None = None
        if p[0] in ("quant_conv", "post_quant_conv"):
            mapped = p
        elif p[0] in ("encoder", "decoder"):
            side, rest = p[0], p[1:]
            if rest[0] == "conv_norm_out":
                mapped = [side, "norm_out"] + rest[1:]
            elif rest[0] in ("conv_in", "conv_out"):
                mapped = [side] + rest
            elif rest[0] in ("down_blocks", "up_blocks"):
                level = int(rest[1])
                if rest[0] == "up_blocks":
                    level = n_up - 1 - level
                group = "down" if rest[0] == "down_blocks" else "up"
                if rest[2] == "resnets":
                    tail = [_VAE_RESNET_RENAMES.get(rest[4], rest[4])] + rest[5:]
                    mapped = [side, group, str(level), "block", rest[3]] + tail
                elif rest[2] in ("downsamplers", "upsamplers"):
                    mapped = [side, group, str(level), "downsample" if group == "down" else "upsample"] + rest[4:]
            elif rest[0] == "mid_block":
                if rest[1] == "resnets":
                    tail = [_VAE_RESNET_RENAMES.get(rest[3], rest[3])] + rest[4:]
                    mapped = [side, "mid", f"block_{int(rest[2]) + 1}"] + tail
                elif rest[1] == "attentions":
                    tail = ".".join(rest[3:])
                    for old, new in _VAE_ATTN_RENAMES.items():
                        if tail.startswith(old + "."):
                            tail = new + tail[len(old):]
                            break
                    mapped = [side, "mid", "attn_1"] + tail.split(".")
        if mapped is not None:
            result[name] = ".".join(mapped)
    return result


def vae_to_ldm_state_dict(sd: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in LDM layout (attention linears become 1×1 convs)."""
    names = vae_diffusers_to_ldm(sd.keys(), config)
    out = {}
    for k, v in sd.items():
        if k not in names:
            raise KeyError(f"no LDM name for VAE parameter {k}")
        new = names[k]
        if ".mid.attn_1." in new and new.endswith(".weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out[new] = v
    return out


# --------------------------------------------------------------------------------------------
# CLIP text encoders: transformers <-> LDM (``transformer.text_model``) and OpenCLIP layouts

def hf_clip_canonical(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise a transformers CLIP text state dict to the ``text_model.*`` (+ ``text_projection``) form.

    transformers ≥ 5.6 flattened CLIPTextModel (no ``text_model.`` prefix) while
    CLIPTextModelWithProjection still has it; files in the wild use either.
    """
    out = {}
    for k, v in sd.items():
        if k.startswith("text_model.") or k.startswith("text_projection") or k == "logit_scale":
            out[k] = v
        else:
            out["text_model." + k] = v
    return out


def openclip_from_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIP text state dict (canonical form) in OpenCLIP layout (SDXL ``embedders.1.model``)."""
    sd = hf_clip_canonical(sd)
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        src = f"text_model.encoder.layers.{i}."
        dst = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [sd[src + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0)
            out[dst + f"attn.out_proj.{kind}"] = sd[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = sd[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = sd[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = sd[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = sd[src + f"mlp.fc2.{kind}"]
    return out


def hf_from_openclip(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP text state dict (no prefix) in canonical transformers form."""
    out: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
    }
    if "text_projection" in sd:
        out["text_projection.weight"] = sd["text_projection"].T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks.")})
    for i in layers:
        src = f"transformer.resblocks.{i}."
        dst = f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[src + f"attn.in_proj_{kind}"].chunk(3, dim=0)
            out[dst + f"self_attn.q_proj.{kind}"] = q.contiguous()
            out[dst + f"self_attn.k_proj.{kind}"] = k.contiguous()
            out[dst + f"self_attn.v_proj.{kind}"] = v.contiguous()
            out[dst + f"self_attn.out_proj.{kind}"] = sd[src + f"attn.out_proj.{kind}"]
            out[dst + f"layer_norm1.{kind}"] = sd[src + f"ln_1.{kind}"]
            out[dst + f"layer_norm2.{kind}"] = sd[src + f"ln_2.{kind}"]
            out[dst + f"mlp.fc1.{kind}"] = sd[src + f"mlp.c_fc.{kind}"]
            out[dst + f"mlp.fc2.{kind}"] = sd[src + f"mlp.c_proj.{kind}"]
    return out


# --------------------------------------------------------------------------------------------
# FLUX transformer: diffusers FluxTransformer2DModel <-> BFL (``double_blocks``/``single_blocks``)

def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """BFL's final adaLN emits (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


_FLUX_PLAIN = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear",
}
_FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
_FLUX_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_FLUX_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_FLUX_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}


def flux_fused_groups(n_double: int, n_single: int) -> dict[str, list[str]]:
    """BFL fused module -> the diffusers modules stacked (in row order) into it."""
    groups: dict[str, list[str]] = {}
    for i in range(n_double):
        d = f"transformer_blocks.{i}.attn."
        groups[f"double_blocks.{i}.img_attn.qkv"] = [d + "to_q", d + "to_k", d + "to_v"]
        groups[f"double_blocks.{i}.txt_attn.qkv"] = [d + "add_q_proj", d + "add_k_proj", d + "add_v_proj"]
    for i in range(n_single):
        s = f"single_transformer_blocks.{i}."
        groups[f"single_blocks.{i}.linear1"] = [s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"]
    return groups


def flux_module_map(n_double: int, n_single: int) -> dict[str, str]:
    """diffusers module -> BFL module for the modules that are not fused (see :func:`flux_fused_groups`)."""
    out = dict(_FLUX_PLAIN)
    for i in range(n_double):
        for d, b in _FLUX_DOUBLE.items():
            out[f"transformer_blocks.{i}.{d}"] = f"double_blocks.{i}.{b}"
    for i in range(n_single):
        for d, b in _FLUX_SINGLE.items():
            out[f"single_transformer_blocks.{i}.{d}"] = f"single_blocks.{i}.{b}"
    return out


def _flux_counts_diffusers(keys: Iterable[str]) -> tuple[int, int]:
    keys = list(keys)
    nd = 1 + max([int(k.split(".")[1]) for k in keys if k.startswith("transformer_blocks.")], default=-1)
    ns = 1 + max([int(k.split(".")[1]) for k in keys if k.startswith("single_transformer_blocks.")], default=-1)
    return nd, ns


def flux_counts_bfl(keys: Iterable[str]) -> tuple[int, int]:
    keys = list(keys)
    nd = 1 + max([int(k.split(".")[1]) for k in keys if k.startswith("double_blocks.")], default=-1)
    ns = 1 + max([int(k.split(".")[1]) for k in keys if k.startswith("single_blocks.")], default=-1)
    return nd, ns


def flux_to_bfl_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in BFL layout (any width/depth)."""
    nd, ns = _flux_counts_diffusers(sd.keys())
    modules = flux_module_map(nd, ns)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for fused, parts in flux_fused_groups(nd, ns).items():
        for kind in ("weight", "bias"):
            names = [f"{p}.{kind}" for p in parts]
            if all(n in sd for n in names):
                out[f"{fused}.{kind}"] = torch.cat([sd[n] for n in names], dim=0)
                used.update(names)
    for i in range(nd):
        for d, b in _FLUX_DOUBLE_NORMS.items():
            out[f"double_blocks.{i}.{b}"] = sd[f"transformer_blocks.{i}.{d}"]
            used.add(f"transformer_blocks.{i}.{d}")
    for i in range(ns):
        for d, b in _FLUX_SINGLE_NORMS.items():
            out[f"single_blocks.{i}.{b}"] = sd[f"single_transformer_blocks.{i}.{d}"]
            used.add(f"single_transformer_blocks.{i}.{d}")
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(sd[f"norm_out.linear.{kind}"])
        used.add(f"norm_out.linear.{kind}")
    for k, v in sd.items():
        if k in used:
            continue
        module, _, kind = k.rpartition(".")
        if module not in modules:
            raise KeyError(f"no BFL name for FLUX parameter {k}")
        out[f"{modules[module]}.{kind}"] = v
    return out


def flux_from_bfl_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BFL FLUX transformer state dict (no ``model.diffusion_model.`` prefix) in diffusers layout.

    Sizes of fused tensors are split from the shapes (q/k/v are ``hidden`` rows each; the rest of
    ``linear1`` is the MLP), so this works for any width — unlike diffusers' own converter.
    """
    nd, ns = flux_counts_bfl(sd.keys())
    hidden = sd["img_in.weight"].shape[0]
    inverse = {b: d for d, b in flux_module_map(nd, ns).items()}
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for fused, parts in flux_fused_groups(nd, ns).items():
        for kind in ("weight", "bias"):
            key = f"{fused}.{kind}"
            if key not in sd:
                continue
            t = sd[key]
            sizes = [hidden] * 3 + ([t.shape[0] - 3 * hidden] if len(parts) == 4 else [])
            for p, chunk in zip(parts, torch.split(t, sizes, dim=0)):
                out[f"{p}.{kind}"] = chunk.contiguous()
            used.add(key)
    for i in range(nd):
        for d, b in _FLUX_DOUBLE_NORMS.items():
            out[f"transformer_blocks.{i}.{d}"] = sd[f"double_blocks.{i}.{b}"]
            used.add(f"double_blocks.{i}.{b}")
    for i in range(ns):
        for d, b in _FLUX_SINGLE_NORMS.items():
            out[f"single_transformer_blocks.{i}.{d}"] = sd[f"single_blocks.{i}.{b}"]
            used.add(f"single_blocks.{i}.{b}")
    for kind in ("weight", "bias"):
        out[f"norm_out.linear.{kind}"] = _swap_halves(sd[f"final_layer.adaLN_modulation.1.{kind}"])
        used.add(f"final_layer.adaLN_modulation.1.{kind}")
    for k, v in sd.items():
        if k in used:
            continue
        module, _, kind = k.rpartition(".")
        if module not in inverse:
            raise KeyError(f"unexpected key in FLUX transformer: {k}")
        out[f"{inverse[module]}.{kind}"] = v
    return out
