"""Which ComfyUI single-file text encoders are whole language models, and their shapes as a config.

ComfyUI keeps the LLM text encoders of recent image models (Qwen-Image's Qwen2.5-VL-7B, Z-Image's and
FLUX.2-klein's Qwen3-4B, LTX-2's Gemma-3-12B …) as one ``.safetensors`` in ``models/text_encoders``
with transformers' tensor names: ``model.embed_tokens.weight``, ``model.layers.N.self_attn.q_proj.weight``,
``model.norm.weight``, ``lm_head.weight`` when the output projection is not tied, and the vision tower
beside them (``visual.*`` for Qwen2.5-VL, ``vision_model.*`` + ``multi_modal_projector.*`` for Gemma-3).
No config travels with the file, so the architecture is read from the names and shapes:

* Gemma-3: ``pre_feedforward_layernorm`` and per-head ``q_norm``; Qwen3: ``q_norm`` only;
  Qwen2.5-VL (a Qwen2 language model): biases on q/k/v and no ``q_norm``.
* sizes from the embedding, the number of ``model.layers.N`` blocks, the MLP and attention
  projections; the head size from ``q_norm`` (Qwen3, Gemma-3) or, for Qwen2, the largest of
  128 / gcd(q, k) rows (128 on every released Qwen2.5, ``hidden / heads`` on small test models).
* what the weights cannot say (rope base, norm epsilon, sliding windows) are the families'
  published constants.

Torch-free on purpose: ``CLIPLoader`` calls :func:`detect` on every file's header.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

Shapes = Mapping[str, tuple[int, ...]]

QWEN25_VL = "qwen2.5-vl"
QWEN3 = "qwen3"
GEMMA3 = "gemma3"
FAMILY_NAMES = {QWEN25_VL: "Qwen2.5-VL", QWEN3: "Qwen3", GEMMA3: "Gemma-3"}

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_QUANT_MARKERS = (".weight_scale", ".input_scale", ".comfy_quant")
"""Per-block quantized formats (int8 / w4a8 / mixed) we refuse; plain scaled fp8 (``.scale_weight``) is
upcast at load time."""
VISION_PREFIXES = ("visual.", "model.visual.", "vision_model.", "multi_modal_projector.", "vision_tower.")


@dataclass(frozen=True)
class VisionLayout:
    """Qwen2.5-VL's vision tower (``visual.*``), sizes from the weights; heads of 80, full attention every
    8th block and 112-pixel windows are the family's constants (Qwen2.5-VL 3B/7B/32B/72B)."""

    hidden_size: int
    depth: int
    intermediate_size: int
    out_hidden_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int

    @property
    def num_heads(self) -> int:
        return max(1, self.hidden_size // 80)

    @property
    def fullatt_block_indexes(self) -> list[int]:
        return [i for i in range(self.depth) if (i + 1) % 8 == 0]


class LayoutError(Exception):
    """A language-model text encoder this loader cannot run (the message says why and what to use)."""


@dataclass(frozen=True)
class EncoderLayout:
    """What a single-file LLM text encoder is: family, sizes, and what else the file holds."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied: bool
    has_vision: bool
    spiece_model: bool = False
    vision: VisionLayout | None = None
    """The vision tower we run (Qwen2.5-VL); other families' towers stay in the file."""
    config_extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return FAMILY_NAMES[self.family]

    def describe(self) -> str:
        size = _param_billions(self)
        return f"a {self.name} language model (~{size} B parameters, {self.num_layers} layers" \
               f"{', with a vision tower' if self.has_vision else ''})"


def _param_billions(layout: EncoderLayout) -> str:
    attn = layout.hidden_size * layout.head_dim * (2 * layout.num_heads + 2 * layout.num_kv_heads)
    mlp = 3 * layout.hidden_size * layout.intermediate_size
    total = layout.num_layers * (attn + mlp) + layout.vocab_size * layout.hidden_size * (1 if layout.tied else 2)
    value = total / 1e9
    return f"{value:.1f}" if value >= 0.1 else f"{value:.4f}"


def family_of(shapes: Shapes) -> str | None:
    """The family of a transformers-named LLM state dict, or None when it is not one of ours."""
    if "model.embed_tokens.weight" not in shapes or "model.layers.0.self_attn.q_proj.weight" not in shapes:
        return None
    q_norm = "model.layers.0.self_attn.q_norm.weight" in shapes
    if "model.layers.0.pre_feedforward_layernorm.weight" in shapes and q_norm:
        return GEMMA3
    if "model.layers.0.post_feedforward_layernorm.weight" in shapes:
        return None  # Gemma 2: a text encoder without a generating family here
    if q_norm:
        return QWEN3
    if "model.layers.0.self_attn.k_proj.bias" in shapes:
        return QWEN25_VL
    return None


def detect(shapes: Shapes) -> EncoderLayout | None:
    """The layout of a single-file Qwen2.5-VL / Qwen3 / Gemma-3 text encoder, or None for anything else.

    Raises :class:`LayoutError` for a recognised family stored in a format we cannot run
    (ComfyUI's int8 / w4a8 / mixed quantized files; scaled fp8 is upcast when loading)."""
    family = family_of(shapes)
    if family is None:
        return None
    if any(k.endswith(m) for k in shapes for m in _QUANT_MARKERS):
        raise LayoutError(f"this {FAMILY_NAMES[family]} file is in one of ComfyUI's quantized formats "
                          "(int8 / w4a8 / mixed with per-block scales), which text generation here cannot run; use "
                          "the bf16, fp16 or fp8_scaled file of the same model")
    vocab, hidden = shapes["model.embed_tokens.weight"][:2]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := _LAYER.match(k)))
    q_out = shapes["model.layers.0.self_attn.q_proj.weight"][0]
    k_out = shapes["model.layers.0.self_attn.k_proj.weight"][0]
    gate = shapes.get("model.layers.0.mlp.gate_proj.weight")
    if gate is None:
        raise LayoutError(f"this {FAMILY_NAMES[family]} file has no model.layers.0.mlp.gate_proj.weight")
    q_norm = shapes.get("model.layers.0.self_attn.q_norm.weight")
    head_dim = int(q_norm[0]) if q_norm else min(128, math.gcd(q_out, k_out))
    if q_out % head_dim or k_out % head_dim:
        raise LayoutError(f"attention shapes q={q_out}, k={k_out} do not divide into heads of {head_dim}")
    return EncoderLayout(
        family=family, vocab_size=int(vocab), hidden_size=int(hidden), num_layers=layers,
        intermediate_size=int(gate[0]), num_heads=q_out // head_dim, num_kv_heads=k_out // head_dim,
        head_dim=head_dim, tied="lm_head.weight" not in shapes,
        has_vision=any(k.startswith(VISION_PREFIXES) for k in shapes),
        spiece_model="spiece_model" in shapes, vision=qwen_vision(shapes) if family == QWEN25_VL else None)


_VISION_BLOCK = re.compile(r"^visual\.blocks\.(\d+)\.")


def qwen_vision(shapes: Shapes) -> VisionLayout | None:
    """Qwen2.5-VL's vision tower read from ``visual.*`` (None when the file has none or an unknown one)."""
    patch = shapes.get("visual.patch_embed.proj.weight")
    gate = shapes.get("visual.blocks.0.mlp.gate_proj.weight")
    merger_in = shapes.get("visual.merger.mlp.0.weight")
    merger_out = shapes.get("visual.merger.mlp.2.weight")
    if not (patch and gate and merger_in and merger_out) or len(patch) != 5:
        return None
    hidden = int(patch[0])
    merge = math.isqrt(int(merger_in[1]) // hidden)
    if merge * merge * hidden != merger_in[1]:
        return None
    depth = 1 + max(int(m.group(1)) for k in shapes if (m := _VISION_BLOCK.match(k)))
    return VisionLayout(hidden_size=hidden, depth=depth, intermediate_size=int(gate[0]),
                        out_hidden_size=int(merger_out[0]), patch_size=int(patch[3]),
                        temporal_patch_size=int(patch[2]), spatial_merge_size=merge)


def language_keys(shapes: Shapes, with_vision: bool = False) -> list[str]:
    """The tensors text generation loads: ``model.*`` and ``lm_head.*`` (plus ``visual.*`` when the vision
    tower runs too)."""
    return [k for k in shapes if (k.startswith("model.") and not k.startswith("model.visual."))
            or k.startswith("lm_head.") or (with_vision and k.startswith("visual."))]
