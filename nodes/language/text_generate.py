"""ComfyUI core's ``TextGenerate`` ("Generate Text") on transformers.

Same id, inputs (order, names, defaults, ranges, the ``sampling_mode`` dynamic combo and the
``images`` autogrow input) and outputs as ComfyUI's node, so the official templates' workflows
load unchanged.  The ``clip`` comes from ``CLIPLoader`` on a Qwen2.5-VL / Qwen3 / Gemma-3 single-file
text encoder (:mod:`nodes.language.text_encoders`).  Differences that users gain from: tokens stream
to the node as they are generated, and the KV cache of a system prompt is reused by the next call.

Sampling follows ComfyUI's node: ``off`` is greedy with no penalties; ``on`` samples with
temperature, top-k, top-p and min-p (transformers' warpers), and the repetition and presence
penalties act on the tokens generated so far, as ComfyUI's do.  ``mtp`` (a checkpoint's
multi-token-prediction head) has no effect: transformers models loaded here have none.  Images work
with Qwen2.5-VL files (their vision tower is loaded); Qwen3 and Gemma-3 run text-only here, and video
and audio inputs are refused, each by name.
"""
from __future__ import annotations

from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import (MAX_SEED, Autogrow, AutogrowTemplate, Boolean, CachePolicy, Combo, DynamicCombo,
                                  DynamicOption, Float, Int, Node, Output, Resource, Socket, String, gather)

SAMPLING_ON = DynamicOption("on", (
    Float("temperature", 0.7, min=0.01, max=2.0, step=0.000001),
    Int("top_k", 64, min=0, max=1000),
    Float("top_p", 0.95, min=0.0, max=1.0, step=0.01),
    Float("min_p", 0.05, min=0.0, max=1.0, step=0.01),
    Float("repetition_penalty", 1.05, min=0.0, max=5.0, step=0.01),
    Int("seed", 0, min=0, max=MAX_SEED),
    Float("presence_penalty", 0.0, min=0.0, max=5.0, step=0.01, optional=True)))


class TextGenerate(Node):
    """Generates text with a language model loaded by CLIPLoader (Qwen2.5-VL, Qwen3, Gemma-3 single files)."""

    DISPLAY_NAME = "Generate Text"
    CATEGORY = "text"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (
        Socket("clip", "CLIP"),
        String("prompt", "", multiline=True, dynamic_prompts=True),
        Autogrow("images", AutogrowTemplate(Socket("image", "IMAGE", tooltip="Image input"), "image_", min=0, max=9),
                 optional=True),
        Socket("video", "IMAGE", optional=True,
               tooltip="Video frames as image batch. Assumed to be 24 FPS; subsampled to 1 FPS internally."),
        Socket("audio", "AUDIO", optional=True),
        Int("max_length", 512, min=1, max=32768),
        DynamicCombo("sampling_mode", (SAMPLING_ON, DynamicOption("off")), display_name="Sampling Mode"),
        Boolean("thinking", False, optional=True, tooltip="Operate in thinking mode if the model supports it."),
        Boolean("use_default_template", True, optional=True, advanced=True,
                tooltip="Use the built in system prompt/template if the model has one."),
        Combo("mtp", ("auto", "off", "2", "3", "4", "5"), "auto", optional=True,
              tooltip="Speculative decoding with the checkpoint's multi-token-prediction head. No effect without "
                      "MTP weights (none of the models loaded here has them)."),
        String("system_prompt", "", optional=True, force_input=True,
               tooltip="Replaces the system prompt in the model's chat template. Ignored when the default "
                       "template is not used."),
    )
    OUTPUTS = (Output("STRING", "generated_text"), Output("STRING", "thinking"))

    def execute(self, ctx: NodeContext, clip: Any, prompt: str = "", max_length: int = 512,
                sampling_mode: str = "on", thinking: bool = False, use_default_template: bool = True,
                mtp: str = "auto", system_prompt: str | None = "", video: Any = None, audio: Any = None,
                **dynamic: Any):
        from nodes.language.text_encoders.loading import LanguageCLIP

        if not isinstance(clip, LanguageCLIP):
            raise NodeError("clip: TextGenerate needs a language-model text encoder: load a Qwen2.5-VL, Qwen3 or "
                            "Gemma-3 single-file text encoder with CLIPLoader (this CLIP encodes prompts for "
                            "diffusion models and cannot generate text)", input_name="clip")
        images = gather("images", dynamic)
        if dynamic.get("image") is not None:  # workflows saved before the autogrow input had one "image"
            images["image"] = dynamic["image"]
        sees = clip.layout.vision is not None
        for name, value in (("images", images or None), ("video", video), ("audio", audio)):
            if value is not None and (name != "images" or not sees):
                what = "images" if sees else "text"
                raise NodeError(f"{name}: this {clip.layout.name} text encoder takes {what} only here"
                                f"{'' if sees else ' (its vision tower is not loaded)'}; disconnect {name}"
                                f"{'' if sees else ', or describe pictures with VLMCaption on a VLM folder'}",
                                input_name=name)
        mode = gather("sampling_mode", {"sampling_mode": sampling_mode, **dynamic})
        from nodes.vision_language.captioning import tensor_images

        pictures = [p for key in sorted(images, key=_slot_order) for p in tensor_images(images[key])]
        return generate_text(ctx, clip, prompt, max_length, mode, thinking=thinking,
                             use_default_template=use_default_template, system_prompt=system_prompt or "",
                             pictures=pictures)


def _slot_order(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else -1, name)


def sampling_from_mode(mode: dict[str, Any], max_length: int) -> tuple[Any, float, float]:
    """(Sampling, repetition penalty, presence penalty) for ComfyUI's ``sampling_mode`` values."""
    from nodes.language.transformers_lm.generation import Sampling

    if mode.get("sampling_mode") != "on":
        return Sampling(max_new_tokens=max_length), 1.0, 0.0
    sampling = Sampling(max_new_tokens=max_length, temperature=float(mode.get("temperature", 0.7)),
                        top_p=float(mode.get("top_p", 0.95)), top_k=int(mode.get("top_k", 64)),
                        min_p=float(mode.get("min_p", 0.05)), seed=int(mode.get("seed", 0)))
    return sampling, float(mode.get("repetition_penalty", 1.0)), float(mode.get("presence_penalty", 0.0) or 0.0)


class GeneratedTokenPenalty:
    """Repetition and presence penalties over the tokens generated so far (ComfyUI's semantics; transformers'
    own repetition penalty would also count the prompt)."""

    def __init__(self, prompt_length: int, repetition: float, presence: float) -> None:
        self.prompt_length, self.repetition, self.presence = prompt_length, repetition, presence

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] == 0:
            return scores
        scores = scores.clone()
        for row in range(scores.shape[0]):
            seen = generated[row].unique()
            picked = scores[row, seen]
            if self.repetition != 1.0:
                picked = picked.where(picked < 0, picked / self.repetition).where(picked >= 0,
                                                                                  picked * self.repetition)
            scores[row, seen] = picked - self.presence
        return scores


def generate_text(ctx: NodeContext, clip: Any, prompt: str, max_length: int, mode: dict[str, Any], *,
                  thinking: bool, use_default_template: bool, system_prompt: str,
                  pictures: list[Any] | None = None) -> tuple[str, str]:
    """Render, tokenize and generate; returns ``(generated_text, thinking)`` as ComfyUI's node splits them."""
    import time

    import torch
    from transformers import LogitsProcessorList

    from nodes.language.text_encoders.chat import render
    from nodes.language.transformers_lm.generation import common_prefix_length, generate, thinking_decoder

    lm = clip.language_model()
    requested_at = time.perf_counter()
    pictures = pictures or []
    text, head = render(clip.family, prompt, system_prompt=system_prompt, thinking=thinking,
                        use_default_template=use_default_template, images=len(pictures))
    tok = lm.tokenizer
    special = not use_default_template  # the templates write their own <bos>
    if pictures:  # the processor expands each placeholder to its image's tokens
        encoded = dict(lm.processor(text=[text], images=pictures, return_tensors="pt"))
        ids = encoded["input_ids"][0].tolist()
    else:
        encoded = {}
        ids = tok(text, add_special_tokens=special)["input_ids"]
    prefix: list[int] = []
    if head and not pictures:  # image positions (3-D rope) are computed over the whole prompt: no reuse
        head_ids = tok(head, add_special_tokens=special)["input_ids"]
        prefix = ids[:common_prefix_length(ids, head_ids)]
    sampling, repetition, presence = sampling_from_mode(mode, max_length)
    extra: dict[str, Any] = {}
    if repetition != 1.0 or presence:
        extra["logits_processor"] = LogitsProcessorList([GeneratedTokenPenalty(len(ids), repetition, presence)])
    inputs = encoded or {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    result = generate(lm, inputs, sampling, ctx, prefix_ids=prefix, models=ctx.models,
                      decode=thinking_decoder(tok), extra=extra, requested_at=requested_at)
    ctx.record(new_tokens=len(result.token_ids), tokens_per_second=round(result.tokens_per_second, 2),
               prefix_tokens_reused=result.prefix_tokens_reused)
    return split_reasoning(result.text, text)


def split_reasoning(generated: str, prompt_text: str) -> tuple[str, str]:
    """(text, reasoning): a reasoning section opens with ``<think>`` in the reply or at the end of the
    prompt, and ends at ``</think>`` (or runs to the end when ``max_length`` cut it short)."""
    reasoning, _, text = generated.partition("</think>")
    if not reasoning.lstrip().startswith("<think>") and not prompt_text.rstrip().endswith("<think>"):
        return generated.strip(), ""
    if not _:
        text = ""
    return text.strip(), reasoning.replace("<think>", "", 1).strip()
