"""Captioning one image with a loaded VLM: inputs per model family, the image-token budget, decoding.

* Chat VLMs (Qwen2/2.5-VL, LLaVA/JoyCaption …): the processor's chat template over one user
  message holding the image and the prompt, with the generation prompt added (no system message).
* Florence-2: a task prompt (``<CAPTION>``, ``<DETAILED_CAPTION>``, ``<MORE_DETAILED_CAPTION>``,
  ``<OCR>``, ``<OD>`` …), decoded with the processor's ``post_process_generation``.
* ``max_pixels`` bounds the image before the processor sees it, and both bounds are passed to
  Qwen-style processors (image tokens = pixels / 28²) when tighter than the processor's own, so a
  huge image costs a bounded number of tokens and never runs out of memory.
"""
from __future__ import annotations

import json
import math
from typing import Any

from nodes.language.transformers_lm.generation import GenerationResult, NodeStreamer, Sampling, generate
from nodes.vision_language.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_PROMPT

FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>", "<OCR>", "<OCR_WITH_REGION>", "<OD>",
                  "<DENSE_REGION_CAPTION>", "<REGION_PROPOSAL>", "<CAPTION_TO_PHRASE_GROUNDING>")


def bound_pixels(image: Any, max_pixels: int, min_pixels: int = 0) -> Any:
    """``image`` (PIL) scaled, keeping its aspect ratio, so that its area lies within the bounds."""
    from PIL import Image

    w, h = image.size
    area = w * h
    scale = 1.0
    if max_pixels and area > max_pixels:
        scale = math.sqrt(max_pixels / area)
    elif min_pixels and area < min_pixels:
        scale = math.sqrt(min_pixels / area)
    if scale == 1.0:
        return image
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def _is_qwen_processor(processor: Any) -> bool:
    return hasattr(getattr(processor, "image_processor", None), "merge_size")


def florence_task(prompt: str) -> str:
    """The Florence-2 task for a prompt: a task token as is; the generic default becomes a detailed caption."""
    text = (prompt or "").strip()
    if not text or text == DEFAULT_PROMPT:
        return "<MORE_DETAILED_CAPTION>"
    return text


def build_inputs(vlm: Any, image: Any, prompt: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_pixels: int = DEFAULT_MIN_PIXELS) -> tuple[dict[str, Any], str]:
    """(processor outputs, the task/prompt used) for one PIL image."""
    processor = vlm.processor
    image = bound_pixels(image.convert("RGB"), max_pixels, 0)
    if vlm.is_florence:
        task = florence_task(prompt)
        return dict(processor(text=task, images=image, return_tensors="pt")), task
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    kwargs: dict[str, Any] = {}
    if _is_qwen_processor(processor):
        size = processor.image_processor.size
        own_max = int(getattr(size, "longest_edge", None) or size["longest_edge"])
        own_min = int(getattr(size, "shortest_edge", None) or size["shortest_edge"])
        longest = min(int(max_pixels), own_max) if max_pixels else own_max
        shortest = min(int(min_pixels), longest) if min_pixels else min(own_min, longest)
        kwargs["images_kwargs"] = {"size": {"longest_edge": longest, "shortest_edge": shortest}}
    return dict(processor(text=[text], images=[image], return_tensors="pt", **kwargs)), prompt


def image_token_count(vlm: Any, inputs: dict[str, Any]) -> int:
    """How many image placeholder tokens the prompt holds (the image's token budget)."""
    token_id = getattr(vlm.model.config, "image_token_id", None)
    if token_id is None or "input_ids" not in inputs:
        return 0
    return int((inputs["input_ids"] == token_id).sum())


def _florence_result(vlm: Any, result: GenerationResult, task: str, size: tuple[int, int]) -> str:
    raw = vlm.processor.batch_decode([result.token_ids], skip_special_tokens=False)[0]
    try:
        parsed = vlm.processor.post_process_generation(raw, task=task, image_size=size)
    except Exception:  # a free-text prompt: no parser for it
        return result.text.strip()
    value = parsed.get(task, parsed) if isinstance(parsed, dict) else parsed
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value)


def caption(ctx: Any, vlm: Any, image: Any, prompt: str, sampling: Sampling, *,
            max_pixels: int = DEFAULT_MAX_PIXELS, min_pixels: int = DEFAULT_MIN_PIXELS,
            progress_offset: float = 0.0, progress_total: float | None = None) -> tuple[str, GenerationResult]:
    """Caption one PIL image; returns (caption, generation details)."""
    inputs, task = build_inputs(vlm, image, prompt, max_pixels=max_pixels, min_pixels=min_pixels)
    streamer = NodeStreamer(vlm.tokenizer, ctx, sampling.max_new_tokens, progress_offset=progress_offset,
                            progress_total=progress_total)
    result = generate(vlm, inputs, sampling, ctx, streamer=streamer)
    if vlm.is_florence:
        return _florence_result(vlm, result, task, image.size), result
    return result.text.strip(), result


def tensor_images(images: Any) -> list[Any]:
    """A ComfyUI IMAGE batch ``[B, H, W, C]`` (or one ``[H, W, C]``) as PIL images."""
    from nodes.image import tensor_to_pil

    if images.ndim == 3:
        images = images[None]
    return [tensor_to_pil(img).convert("RGB") for img in images]
