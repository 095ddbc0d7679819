"""ControlNet key maps and config inference: original layouts <-> diffusers modules.

Why this exists: users' ControlNet files come in the training code's layouts — lllyasviel's LDM
layout for SD1.5/SDXL (``control_model.input_blocks…``, ``zero_convs``, ``input_hint_block``,
``middle_block_out``) and XLabs' BFL-style layout for FLUX (``double_blocks``, ``controlnet_blocks``,
``input_hint_block``, ``pos_embed_input``) — while we run diffusers' ``ControlNetModel`` and
``FluxControlNetModel``.  The maps here are computed from a *config* (block types, layers per
block, number of hint convolutions), never from hard-coded SD1.5 block counts, so one function
serves a tiny test ControlNet and a full-size one, in both directions: the tiny-model writer goes
diffusers → original, the loader original → diffusers.

A ControlNet is a copy of the UNet's encoder, so the UNet part of the map is the loader pack's
:func:`nodes.diffusion.keymaps.unet_module_map`; only the ControlNet-specific modules are added.
"""
from __future__ import annotations

import inspect
import re
from typing import Iterable, Mapping

import torch

from nodes.diffusion import configs, keymaps
from nodes.diffusion.types import ModelFamily

# encoder-side diffusers module prefixes a ControlNetModel shares with the UNet
_ENCODER_PREFIXES = ("time_embedding.", "add_embedding.", "class_embedding.", "conv_in", "down_blocks.", "mid_block.")

LDM_PREFIX = "control_model."


class ControlNetFormatError(ValueError):
    """A ControlNet file whose structure cannot be read (missing or oddly shaped tensors)."""


# --------------------------------------------------------------------------------------------
# conditioning (hint) embedding: nn.Sequential indices <-> ControlNetConditioningEmbedding

def hint_block_map(n_levels: int, ldm_prefix: str = "input_hint_block", diffusers_prefix: str =
                   "controlnet_cond_embedding") -> dict[str, str]:
    """diffusers module -> original ``nn.Sequential`` index for a hint encoder of ``n_levels`` channel levels.

    The original is ``conv, SiLU, conv, SiLU, …, zero_conv`` (convolutions at even indices): ``conv_in``
    then two convolutions per extra level (keep width, then stride-2 to the next width), then
    ``conv_out`` — exactly diffusers' ``ControlNetConditioningEmbedding`` in order.
    """
    n_blocks = 2 * (n_levels - 1)
    out = {f"{diffusers_prefix}.conv_in": f"{ldm_prefix}.0"}
    for j in range(n_blocks):
        out[f"{diffusers_prefix}.blocks.{j}"] = f"{ldm_prefix}.{2 * (j + 1)}"
    out[f"{diffusers_prefix}.conv_out"] = f"{ldm_prefix}.{2 * (n_blocks + 1)}"
    return out


def hint_levels_from_original(shapes: Mapping[str, tuple], prefix: str = "input_hint_block.") -> tuple[int, ...]:
    """``conditioning_embedding_out_channels`` of an original hint encoder, from its conv weights."""
    idx = sorted(int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.weight$", k)))
    if len(idx) < 2 or len(idx) % 2:
        raise ControlNetFormatError(f"unexpected hint encoder layout ({len(idx)} convolutions under {prefix})")
    convs = [tuple(shapes[f"{prefix}{i}.weight"]) for i in idx]
    levels = [convs[0][0]] + [convs[j][0] for j in range(2, len(convs) - 1, 2)]
    return tuple(int(c) for c in levels)


# --------------------------------------------------------------------------------------------
# SD1.5 / SDXL ControlNets (lllyasviel's cldm layout)

def _unet_like(config: Mapping) -> dict:
    """A UNet-shaped view of a ControlNetModel config (the UNet map also wants up blocks)."""
    cfg = dict(config)
    downs = list(cfg["down_block_types"])
    cfg["up_block_types"] = [t.replace("Down", "Up") for t in reversed(downs)]
    return cfg


def controlnet_module_map(config: Mapping) -> dict[str, tuple[str, str]]:
    """diffusers ControlNetModel module -> (original module, kind) with kind "resnet"/"attn"/"plain"."""
    unet = keymaps.unet_module_map(_unet_like(config))
    out = {d: v for d, v in unet.items() if d.startswith(_ENCODER_PREFIXES)}
    n_down = len(list(config["down_block_types"]))
    lpb = keymaps._per_block(config.get("layers_per_block", 2), n_down)
    n_zero = 1 + sum(lpb) + (n_down - 1)
    for i in range(n_zero):
        out[f"controlnet_down_blocks.{i}"] = (f"zero_convs.{i}.0", "plain")
    out["controlnet_mid_block"] = ("middle_block_out.0", "plain")
    levels = len(tuple(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)))
    for d, o in hint_block_map(levels).items():
        out[d] = (o, "plain")
    return out


def controlnet_diffusers_to_original(names: Iterable[str], config: Mapping) -> dict[str, str]:
    """``{diffusers_name: original_name}`` (without ``control_model.``) for ControlNetModel parameters."""
    modules = controlnet_module_map(config)
    result = {}
    for name in names:
        mapped = keymaps._map_by_modules(name, modules, keymaps._RESNET_RENAMES)
        if mapped is not None:
            result[name] = mapped
    return result


def sd_controlnet_family(shapes: Mapping[str, tuple]) -> tuple[ModelFamily | None, str]:
    """(family, unsupported reason) of an original-layout SD ControlNet (keys without ``control_model.``)."""
    if "label_emb.0.0.weight" in shapes:
        return ModelFamily.SDXL, ""
    ctx = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    if ctx == 1024:
        return None, "Stable Diffusion 2.x"
    return ModelFamily.SD15, ""


def controlnet_init_keys() -> set[str]:
    from diffusers import ControlNetModel

    return set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}


def infer_sd_controlnet_config(sd: Mapping[str, torch.Tensor], family: ModelFamily) -> dict:
    """ControlNetModel config of an original-layout state dict (keys without ``control_model.``).

    A ControlNet is the UNet's encoder, so the UNet inference of the loader pack does the work; it
    reads the output convolution only for ``out_channels``, which a ControlNet lacks, so a
    shape-only placeholder stands in for it.
    """
    try:
        in_ch = sd["input_blocks.0.0.weight"].shape[1]
        probe = dict(sd)
        probe["out.2.weight"] = torch.empty((in_ch, 1, 1, 1), device="meta")
        unet_cfg = configs.infer_sd_unet_config(probe, family)
        hint = hint_levels_from_original({k: tuple(v.shape) for k, v in sd.items()})
        hint_in = sd["input_hint_block.0.weight"].shape[1]
    except (KeyError, StopIteration, ValueError, IndexError) as exc:
        raise ControlNetFormatError(f"cannot read the ControlNet structure ({exc!s})") from exc
    allowed = controlnet_init_keys()
    cfg = {k: v for k, v in unet_cfg.items() if k in allowed}
    cfg.update(conditioning_channels=int(hint_in), conditioning_embedding_out_channels=hint)
    return cfg


def sd_controlnet_from_original(sd: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """Original-layout tensors (no prefix) renamed for a ControlNetModel built from ``config``."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    with init_empty_weights():
        empty = ControlNetModel.from_config(dict(config))
    names = controlnet_diffusers_to_original(empty.state_dict().keys(), config)
    unexpected = sorted(set(sd) - set(names.values()))
    if unexpected:
        raise ControlNetFormatError(f"it has {len(unexpected)} tensors a ControlNet of this structure does not have "
                                    f"(e.g. {', '.join(unexpected[:3])}); it is a ControlNet variant that is not "
                                    "supported")
    return {d: sd[o] for d, o in names.items() if o in sd}


def sd_controlnet_to_original(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A ControlNetModel's weights in lllyasviel's layout, with the ``control_model.`` prefix."""
    sd = module.state_dict()
    names = controlnet_diffusers_to_original(sd.keys(), module.config)
    missing = [k for k in sd if k not in names]
    if missing:
        raise KeyError(f"no original name for ControlNet parameters {missing[:5]}")
    return {LDM_PREFIX + names[k]: v for k, v in sd.items()}


def infer_diffusers_sd_controlnet_config(sd: Mapping[str, torch.Tensor]) -> tuple[ModelFamily | None, str, dict]:
    """(family, unsupported reason, config) of a diffusers-layout ControlNetModel state dict.

    Translates the names to the original layout through a probe config built from the key
    structure, then runs the one shape-based inference, so both layouts share it.
    """
    try:
        n_levels = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("down_blocks."))
        attn = tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd) for i in range(n_levels))
        lpb = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("down_blocks.0.resnets."))
        n_hint_blocks = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("controlnet_cond_embedding.blocks."))
    except ValueError as exc:
        raise ControlNetFormatError(f"cannot read the ControlNet structure ({exc!s})") from exc
    probe = {"down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
             "layers_per_block": lpb, "conditioning_embedding_out_channels": (1,) * (n_hint_blocks // 2 + 1)}
    names = controlnet_diffusers_to_original(sd.keys(), probe)
    original = {names[k]: v for k, v in sd.items() if k in names}
    family, unsupported = sd_controlnet_family({k: tuple(v.shape) for k, v in original.items()})
    if family is None:
        return None, unsupported, {}
    return family, "", infer_sd_controlnet_config(original, family)


# --------------------------------------------------------------------------------------------
# FLUX ControlNets: diffusers/InstantX layout and XLabs' BFL-style layout

# XLabs-only modules -> diffusers FluxControlNetModel modules
_XLABS_EXTRA = {"pos_embed_input": "controlnet_x_embedder"}
XLABS_HINT_LEVELS = 4  # XLabs' hint encoder: 3 stride-2 steps, 16 channels throughout


def infer_flux_controlnet_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """FluxControlNetModel config of a diffusers-layout state dict (InstantX, Shakker union, converted XLabs)."""
    try:
        nd = 1 + max([int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")], default=-1)
        ns = 1 + max([int(k.split(".")[1]) for k in sd if k.startswith("single_transformer_blocks.")], default=-1)
        hidden, in_ch = sd["x_embedder.weight"].shape
        norm_key = "transformer_blocks.0.attn.norm_q.weight" if nd else "single_transformer_blocks.0.attn.norm_q.weight"
        head_dim = int(sd[norm_key].shape[0])
        cfg = {
            "patch_size": 1,
            "in_channels": int(in_ch),
            "num_layers": nd,
            "num_single_layers": ns,
            "attention_head_dim": head_dim,
            "num_attention_heads": int(hidden) // head_dim,
            "joint_attention_dim": int(sd["context_embedder.weight"].shape[1]),
            "pooled_projection_dim": int(sd["time_text_embed.text_embedder.linear_1.weight"].shape[1]),
            "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in sd,
            "axes_dims_rope": list(configs.flux_rope_axes(head_dim)),
            "num_mode": int(sd["controlnet_mode_embedder.weight"].shape[0]) if "controlnet_mode_embedder.weight" in sd else None,
            "conditioning_embedding_channels": None,
        }
        if "input_hint_block.conv_out.weight" in sd:
            hint_out = int(sd["input_hint_block.conv_out.weight"].shape[0])
            cfg["conditioning_embedding_channels"] = hint_out
            # the hint features are cut into patches that must match the latent tokens' width
            cfg["patch_size"] = int(round((int(in_ch) // hint_out) ** 0.5))
    except (KeyError, ValueError, IndexError) as exc:
        raise ControlNetFormatError(f"cannot read the FLUX ControlNet structure ({exc!s})") from exc
    return cfg


def _with_placeholder_final_layer(bfl: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    # The loader pack's FLUX converters expect a whole transformer; a ControlNet has no output
    # layer, so a shape-only placeholder goes in and its converted counterpart is dropped again.
    out = dict(bfl)
    out["final_layer.adaLN_modulation.1.weight"] = torch.zeros(2 * hidden, 1)
    out["final_layer.adaLN_modulation.1.bias"] = torch.zeros(2 * hidden)
    return out


def xlabs_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An XLabs FLUX ControlNet state dict renamed (and qkv-split) for FluxControlNetModel."""
    body: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    hint = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("input_hint_block.")}
    levels = len(hint_levels_from_original(hint))
    inverse_hint = {o: d for d, o in hint_block_map(levels, "input_hint_block", "input_hint_block").items()}
    for k, v in sd.items():
        module, _, kind = k.rpartition(".")
        if k.startswith("controlnet_blocks."):
            out[k] = v
        elif module in _XLABS_EXTRA:
            out[f"{_XLABS_EXTRA[module]}.{kind}"] = v
        elif k.startswith("input_hint_block."):
            if module not in inverse_hint:
                raise ControlNetFormatError(f"unexpected hint encoder tensor {k}")
            out[f"{inverse_hint[module]}.{kind}"] = v
        else:
            body[k] = v
    try:
        hidden = int(body["img_in.weight"].shape[0])
        converted = keymaps.flux_from_bfl_state_dict(_with_placeholder_final_layer(body, hidden))
    except KeyError as exc:
        raise ControlNetFormatError(f"cannot read the XLabs FLUX ControlNet ({exc!s})") from exc
    out.update({k: v for k, v in converted.items() if not k.startswith("norm_out.")})
    return out


def xlabs_from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FluxControlNetModel with a hint encoder (``conditioning_embedding_channels``) in XLabs' layout."""
    body: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    n_hint = len({k.split(".")[2] for k in sd if k.startswith("input_hint_block.blocks.")})
    hint_map = hint_block_map(n_hint // 2 + 1, "input_hint_block", "input_hint_block")
    extra_inverse = {d: o for o, d in _XLABS_EXTRA.items()}
    for k, v in sd.items():
        module, _, kind = k.rpartition(".")
        if k.startswith("controlnet_blocks."):
            out[k] = v
        elif k.startswith("controlnet_single_blocks.") or k.startswith("single_transformer_blocks."):
            raise ValueError("XLabs ControlNets have no single-stream blocks")
        elif module in extra_inverse:
            out[f"{extra_inverse[module]}.{kind}"] = v
        elif module in hint_map:
            out[f"{hint_map[module]}.{kind}"] = v
        else:
            body[k] = v
    hidden = int(body["x_embedder.weight"].shape[0])
    body["norm_out.linear.weight"] = torch.zeros(2 * hidden, 1)
    body["norm_out.linear.bias"] = torch.zeros(2 * hidden)
    bfl = keymaps.flux_to_bfl_state_dict(body)
    out.update({k: v for k, v in bfl.items() if not k.startswith("final_layer.")})
    return out
