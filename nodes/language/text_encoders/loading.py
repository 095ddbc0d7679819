"""Load a single-file LLM text encoder as a transformers causal LM, and the CLIP value that carries it.

The config comes from the file's shapes (:mod:`.layouts`), the tokenizer from
:mod:`.tokenizers`; the weights are read from the file and assigned into a model built on the meta
device, so nothing is allocated twice.  Qwen2.5-VL files load with their vision tower
(``Qwen2_5_VLForConditionalGeneration`` and its image processor), so ``TextGenerate`` takes images;
the other families' towers stay on disk (text only).  ComfyUI's "fp8 scaled" storage is upcast on the way.
The model lives in the model manager like every other model (a handle, evictable, reloaded on use).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.language.text_encoders.layouts import GEMMA3, QWEN3, QWEN25_VL, EncoderLayout, LayoutError, language_keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LanguageCLIP:
    """CLIP value of an LLM text encoder: what ``TextGenerate`` generates with.

    ``weights`` is the model manager's handle to a :class:`~nodes.language.transformers_lm.loading.LanguageModel`.
    """

    weights: Any
    layout: EncoderLayout
    file_name: str

    def model_handles(self) -> list[Any]:
        return [self.weights]

    def language_model(self) -> Any:
        return self.weights.get()

    @property
    def family(self) -> str:
        return self.layout.family


def transformers_config(layout: EncoderLayout, tokenizer: Any) -> Any:
    """A transformers config for ``layout`` (sizes from the weights, the rest from the family)."""
    common = dict(vocab_size=layout.vocab_size, hidden_size=layout.hidden_size,
                  intermediate_size=layout.intermediate_size, num_hidden_layers=layout.num_layers,
                  num_attention_heads=layout.num_heads, num_key_value_heads=layout.num_kv_heads,
                  rms_norm_eps=1e-6, tie_word_embeddings=layout.tied, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=stop_token_ids(layout, tokenizer), bos_token_id=tokenizer.bos_token_id)
    if layout.family == QWEN25_VL and layout.vision is not None:
        return qwen25_vl_config(layout, tokenizer, common)
    if layout.family == QWEN25_VL:
        from transformers import Qwen2Config

        # the language half of Qwen2.5-VL: with text-only input its 3-D rope positions coincide,
        # which is plain rope over the full head
        return Qwen2Config(**common, max_position_embeddings=128000,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if layout.family == QWEN3:
        from transformers import Qwen3Config

        return Qwen3Config(**common, head_dim=layout.head_dim, max_position_embeddings=40960,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if layout.family == GEMMA3:
        from transformers import Gemma3TextConfig

        small = layout.hidden_size <= 1152  # Gemma-3-1B: shorter window, no long-context rope scaling
        full_rope = {"rope_type": "default", "rope_theta": 1e6} if small else \
            {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
        query_scale = layout.hidden_size // layout.num_heads if layout.hidden_size == 5376 else layout.head_dim
        return Gemma3TextConfig(
            **common, head_dim=layout.head_dim, query_pre_attn_scalar=query_scale,
            sliding_window=512 if small else 1024, max_position_embeddings=32768 if small else 131072,
            layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                         for i in range(layout.num_layers)],
            rope_parameters={"full_attention": full_rope,
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    raise LayoutError(f"no transformers architecture for {layout.family}")  # pragma: no cover


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's split of the rotary half-head over time / height / width (16, 24, 24 of 64)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def qwen25_vl_config(layout: EncoderLayout, tokenizer: Any, common: dict[str, Any]) -> Any:
    """Qwen2.5-VL with its vision tower: the language sizes of ``layout``, the tower's from ``layout.vision``."""
    from transformers import Qwen2_5_VLConfig

    v = layout.vision
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = dict(common, max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "mrope_section": mrope_section(layout.head_dim),
                                 "rope_theta": 1e6})
    vision = dict(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                  out_hidden_size=v.out_hidden_size, num_heads=v.num_heads, patch_size=v.patch_size,
                  spatial_merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size,
                  window_size=112, fullatt_block_indexes=v.fullatt_block_indexes, in_channels=3)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=layout.tied)


def qwen25_vl_processor(layout: EncoderLayout, tokenizer: Any) -> Any:
    """The image processor Qwen2.5-VL uses (patches of 14, 2×2 merge), with the file's tokenizer."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    v = layout.vision
    sizes = dict(patch_size=v.patch_size, merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(**sizes))


def to_transformers_names(tensors: dict[str, Any], layout: EncoderLayout) -> dict[str, Any]:
    """ComfyUI's single-file names → the transformers model's (Qwen2.5-VL with its tower nests both halves)."""
    if layout.vision is None:
        return tensors
    out = {}
    for k, v in tensors.items():
        if k.startswith("visual."):
            out["model." + k] = v
        elif k.startswith("model."):
            out["model.language_model." + k[len("model."):]] = v
        else:
            out[k] = v
    return out


def stop_token_ids(layout: EncoderLayout, tokenizer: Any) -> list[int]:
    """Tokens that end a reply: ``<|im_end|>`` / ``<|endoftext|>`` (Qwen), ``<eos>`` / ``<end_of_turn>`` (Gemma)."""
    names = ("<eos>", "<end_of_turn>") if layout.family == GEMMA3 else ("<|im_end|>", "<|endoftext|>")
    ids = []
    for name in names:
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    if not ids and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def _causal_lm_class(layout: EncoderLayout) -> Any:
    from transformers import Gemma3ForCausalLM, Qwen2_5_VLForConditionalGeneration, Qwen2ForCausalLM, Qwen3ForCausalLM

    if layout.vision is not None:
        return Qwen2_5_VLForConditionalGeneration

    return {QWEN25_VL: Qwen2ForCausalLM, QWEN3: Qwen3ForCausalLM, GEMMA3: Gemma3ForCausalLM}[layout.family]


def load_text_encoder_lm(path: Path, layout: EncoderLayout, shapes: dict, device: Any, dtype: Any) -> Any:
    """Build the causal LM of ``layout`` and fill it with the file's language-model tensors."""
    import torch

    from nodes.diffusion import model_files
    from nodes.language.text_encoders.tokenizers import load_tokenizer
    from nodes.language.transformers_lm.catalog import ModelSource
    from nodes.language.transformers_lm.loading import LanguageModel

    wanted = set(language_keys(shapes, with_vision=layout.vision is not None))
    if layout.spiece_model:
        wanted.add("spiece_model")
    tensors = model_files.load(path, lambda k: k in wanted or k.endswith((".scale_weight", ".scale_input"))
                               or k == "scaled_fp8")
    spiece = tensors.pop("spiece_model", None)
    if any(k.endswith(".scale_weight") for k in tensors):
        model_files.dequantize_scaled_fp8(tensors, dtype)
    tokenizer = load_tokenizer(path, layout, None if spiece is None else bytes(spiece.to(torch.uint8).tolist()))
    if len(tokenizer) > layout.vocab_size:
        raise LayoutError(f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                          f"{layout.vocab_size} rows: it is not this model's tokenizer")
    config = transformers_config(layout, tokenizer)
    with torch.device("meta"):
        model = _causal_lm_class(layout)(config)
    state = to_transformers_names({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()},
                                  layout)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (layout.tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise LayoutError(f"{path.name} does not match the {layout.name} layout read from its shapes "
                          f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    if layout.tied:
        model.tie_weights()
    _materialize_buffers(model, config)
    model.to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = stop_token_ids(layout, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    processor = qwen25_vl_processor(layout, tokenizer) if layout.vision is not None else None
    return LanguageModel(model=model, tokenizer=tokenizer, processor=processor,
                         source=ModelSource(path.name, path.parent), key=("text-encoder-lm", str(path)))


def _materialize_buffers(model: Any, config: Any) -> None:
    """Modules whose buffers were made on the meta device (rotary frequencies, not stored in files)
    are built again on the CPU from their config."""
    import torch

    for name, module in list(model.named_modules()):
        if not any(b.device.type == "meta" for b in module.buffers(recurse=False)):
            continue
        if hasattr(module, "config"):  # rotary embeddings: computed from the config
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            with torch.device("cpu"):
                setattr(parent, leaf, type(module)(config=module.config))
            continue
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            scalar = getattr(module, "scalar_" + buf_name, None)  # Gemma's embedding scale
            if buf.device.type == "meta":
                if scalar is None:
                    raise LayoutError(f"cannot initialise buffer {name}.{buf_name} ({type(module).__name__})")
                module.register_buffer(buf_name, torch.tensor(float(scalar)), persistent=False)
