"""Nodes of the ComfyUI packs users' workflows already hold, on our loading and generation:
``AILab_QwenVL`` (1038lab/ComfyUI-QwenVL) and kijai's ``DownloadAndLoadFlorence2Model`` + ``Florence2Run``.

Same node ids, widgets (order, names, option strings) and outputs as the packs, so saved workflows
load unchanged; models come from local folders only (``models/vlm``, or ``models/LLM`` as the packs
keep them), never from a download.
"""
from __future__ import annotations

import json
from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Boolean, CachePolicy, Combo, Int, Node, Output, Resource, Socket, String
from nodes.language.transformers_lm.catalog import ModelList
from nodes.language.transformers_lm.options import LoadOptions

QWENVL_QUANTIZATION = {"4-bit (VRAM-friendly)": "bnb_nf4", "8-bit (Balanced)": "bnb_int8", "None (FP16)": "none"}
QWENVL_ATTENTION = {"auto": "auto", "sage": "auto", "flash_attention_2": "auto", "sdpa": "sdpa"}
QWENVL_PRESETS = {
    "🏷️ Tags": "List comma-separated tags describing this image: subjects, style, colours, lighting, composition.",
    "🖼️ Simple Description": "Describe this image in one sentence.",
    "🖼️ Detailed Description": "Describe this image in detail: the subjects, the setting, colours, lighting "
                              "and mood.",
    "🖼️ Ultra Detailed Description": "Describe this image exhaustively: every subject, object, texture, colour, "
                                    "light source, the camera angle and the style.",
    "🎬 Cinematic Description": "Describe this image as a film shot: framing, camera, lighting, mood and action.",
    "🎞️ Video Summary": "Summarise what happens across these frames.",
    "✨ Prompt Refine & Expand": "Write a detailed text-to-image prompt that would reproduce this image.",
}


class AILab_QwenVL(Node):
    """QwenVL (1038lab): describes an image (or video frames) with a local Qwen-VL model; output ``RESPONSE``."""

    DISPLAY_NAME = "QwenVL"
    CATEGORY = "🧪AILab/QwenVL"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (Combo("model_name", ModelList("vlm")),
              Combo("quantization", tuple(QWENVL_QUANTIZATION), "None (FP16)"),
              Combo("attention_mode", tuple(QWENVL_ATTENTION), "auto"),
              Combo("preset_prompt", tuple(QWENVL_PRESETS), "🖼️ Detailed Description"),
              String("custom_prompt", "", multiline=True, tooltip="Replaces the preset when not empty."),
              Int("max_tokens", 512, min=64, max=2048),
              Boolean("keep_model_loaded", True, tooltip="A hint: the model manager decides what stays resident."),
              Int("seed", 1, min=1, max=2 ** 32 - 1, control_after_generate=True),
              Socket("image", "IMAGE", optional=True),
              Socket("video", "IMAGE", optional=True))
    OUTPUTS = (Output("STRING", "RESPONSE"),)

    def execute(self, ctx: NodeContext, model_name: str, quantization: str = "None (FP16)", attention_mode: str = "auto",
                preset_prompt: str = "🖼️ Detailed Description", custom_prompt: str = "", max_tokens: int = 512,
                keep_model_loaded: bool = True, seed: int = 1, image=None, video=None):
        from nodes.language.transformers_lm.generation import Sampling
        from nodes.language.transformers_lm.handles import load_model
        from nodes.vision_language.captioning import caption, tensor_images

        pictures = tensor_images(image) if image is not None else []
        if video is not None:
            frames = tensor_images(video)
            pictures += [frames[i] for i in sorted({round(k * (len(frames) - 1) / 3) for k in range(4)})]
        if not pictures:
            raise NodeError("image: connect an image (or video frames) to describe", input_name="image")
        options = LoadOptions(QWENVL_QUANTIZATION.get(quantization, "none"), "auto",
                              QWENVL_ATTENTION.get(attention_mode, "auto"), "auto")
        vlm = load_model(ctx, "vlm", model_name, options, vision=True).get()
        prompt = custom_prompt.strip() or QWENVL_PRESETS.get(preset_prompt, QWENVL_PRESETS["🖼️ Detailed Description"])
        sampling = Sampling(max_new_tokens=max_tokens, seed=seed)
        texts = [caption(ctx, vlm, p, prompt, sampling, progress_offset=i * max_tokens,
                         progress_total=len(pictures) * max_tokens)[0] for i, p in enumerate(pictures)]
        return ("\n\n".join(texts),)


FLORENCE_PRECISION = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
FLORENCE_TASKS = {
    "caption": "<CAPTION>", "detailed_caption": "<DETAILED_CAPTION>", "more_detailed_caption": "<MORE_DETAILED_CAPTION>",
    "region_caption": "<OD>", "dense_region_caption": "<DENSE_REGION_CAPTION>", "region_proposal": "<REGION_PROPOSAL>",
    "caption_to_phrase_grounding": "<CAPTION_TO_PHRASE_GROUNDING>",
    "referring_expression_segmentation": "<REFERRING_EXPRESSION_SEGMENTATION>", "ocr": "<OCR>",
    "ocr_with_region": "<OCR_WITH_REGION>", "docvqa": "<DocVQA>", "prompt_gen_tags": "<GENERATE_TAGS>",
    "prompt_gen_mixed_caption": "<MIXED_CAPTION>", "prompt_gen_analyze": "<ANALYZE>",
    "prompt_gen_mixed_caption_plus": "<MIXED_CAPTION_PLUS>"}
_TEXT_TASKS = ("caption_to_phrase_grounding", "referring_expression_segmentation", "docvqa")


class DownloadAndLoadFlorence2Model(Node):
    """Loads a Florence-2 model (kijai's node); local folders only: ``models/vlm`` or ``models/LLM``."""

    CATEGORY = "Florence2"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("model", ModelList("vlm")),
              Combo("precision", tuple(FLORENCE_PRECISION), "fp16"),
              Combo("attention", ("flash_attention_2", "sdpa", "eager"), "sdpa"),
              Socket("lora", "PEFTLORA", optional=True),
              Boolean("convert_to_safetensors", False, optional=True))
    OUTPUTS = (Output("FL2MODEL", "florence2_model"),)

    def execute(self, ctx: NodeContext, model: str, precision: str = "fp16", attention: str = "sdpa", lora=None,
                convert_to_safetensors: bool = False):
        from nodes.language.transformers_lm.handles import load_model
        from nodes.language.transformers_lm.loading import resolve_device

        if lora is not None:
            raise NodeError("lora: Florence-2 LoRAs are not supported", input_name="lora")
        dtype = FLORENCE_PRECISION.get(precision, "fp32")
        if resolve_device("auto", ctx.options.device).type == "cpu" and dtype == "fp16":
            dtype = "fp32"  # fp16 matmuls on the CPU are slow and lossy; the pack does the same off CUDA
        vlm = load_model(ctx, "vlm", model, LoadOptions("none", dtype, "eager" if attention == "eager" else "sdpa"),
                         vision=True, input_name="model")
        lm = vlm.get()
        if not lm.is_florence:
            raise NodeError(f"model: {model} is a {lm.model_type} model, not Florence-2", input_name="model")
        return (vlm,)


class Florence2Run(Node):
    """Runs a Florence-2 task on each image (kijai's node): caption, OCR, detection … → image, mask, caption, data."""

    CATEGORY = "Florence2"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (Socket("image", "IMAGE"), Socket("florence2_model", "FL2MODEL"),
              String("text_input", "", multiline=True),
              Combo("task", tuple(FLORENCE_TASKS), "more_detailed_caption"),
              Boolean("fill_mask", True),
              Boolean("keep_model_loaded", False, optional=True),
              Int("max_new_tokens", 1024, min=1, max=4096, optional=True),
              Int("num_beams", 3, min=1, max=64, optional=True),
              Boolean("do_sample", True, optional=True),
              String("output_mask_select", "", optional=True),
              Int("seed", 1, min=1, max=2 ** 64 - 1, control_after_generate=True, optional=True))
    OUTPUTS = (Output("IMAGE", "image"), Output("MASK", "mask"), Output("STRING", "caption"), Output("JSON", "data"))

    def execute(self, ctx: NodeContext, image, florence2_model, text_input: str = "", task: str = "more_detailed_caption",
                fill_mask: bool = True, keep_model_loaded: bool = False, max_new_tokens: int = 1024,
                num_beams: int = 3, do_sample: bool = True, output_mask_select: str = "", seed: int = 1):
        import torch

        from nodes.image import pil_to_tensor
        from nodes.language.transformers_lm.generation import Sampling
        from nodes.vision_language.captioning import caption, tensor_images

        from nodes.language.transformers_lm.handles import loaded

        vlm = loaded(florence2_model, "florence2_model", "DownloadAndLoadFlorence2Model")
        if not vlm.is_florence:
            raise NodeError("florence2_model: connect DownloadAndLoadFlorence2Model", input_name="florence2_model")
        prompt = FLORENCE_TASKS[task] + (text_input if task in _TEXT_TASKS else "")
        # do_sample with beams is beam-sampling; the seed makes it reproducible
        sampling = Sampling(max_new_tokens=max_new_tokens, num_beams=num_beams, seed=seed,
                            temperature=1.0 if do_sample else 0.0, top_p=1.0)
        pictures = tensor_images(image)
        captions, data, out_images, masks = [], [], [], []
        for i, picture in enumerate(pictures):
            text, _ = caption(ctx, vlm, picture, prompt, sampling, max_pixels=0,
                              progress_offset=i * max_new_tokens, progress_total=len(pictures) * max_new_tokens)
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            captions.append(text if isinstance(parsed, str) else json.dumps(parsed))
            data.append(parsed)
            out_images.append(pil_to_tensor(_draw(picture, parsed)))
            masks.append(torch.zeros(picture.size[1], picture.size[0]))
        caption_out = captions[0] if len(captions) == 1 else captions
        return (torch.cat(out_images), torch.stack(masks), caption_out, data[0] if len(data) == 1 else data)


def _draw(picture: Any, parsed: Any) -> Any:
    """The image with the detected boxes drawn (a copy of the image for text-only tasks)."""
    from PIL import ImageDraw

    out = picture.copy()
    if isinstance(parsed, dict) and parsed.get("bboxes"):
        draw = ImageDraw.Draw(out)
        for box, label in zip(parsed["bboxes"], parsed.get("labels", [""] * len(parsed["bboxes"]))):
            draw.rectangle(box, outline=(255, 0, 0), width=2)
            draw.text((box[0] + 2, box[1] + 2), str(label), fill=(255, 0, 0))
    return out
