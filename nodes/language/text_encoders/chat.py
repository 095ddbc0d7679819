"""The chat format each family's instruction-tuned model expects, as ``TextGenerate`` renders it.

* Qwen2.5-VL: ChatML with the default system message "You are a helpful assistant.";
* Qwen3: ChatML, a system message only when one is given, and the assistant turn opened with an
  empty ``<think>`` block when thinking is off (``<think>`` left open when it is on);
* Gemma-3: ``<bos>`` and turns ``<start_of_turn>user`` / ``<start_of_turn>model``; Gemma has no
  system role, so a system prompt leads the user turn.

Without the default template the prompt is sent as written.  :func:`render` also returns the
system head, the part a later call with the same system prompt shares (its KV cache is reused).
"""
from __future__ import annotations

from nodes.language.text_encoders.layouts import GEMMA3, QWEN3, QWEN25_VL

QWEN25_DEFAULT_SYSTEM = "You are a helpful assistant."


IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def render(family: str, prompt: str, *, system_prompt: str = "", thinking: bool = False,
           use_default_template: bool = True, images: int = 0) -> tuple[str, str]:
    """(full prompt text, shareable head) for ``prompt`` in ``family``'s chat format; ``images`` Qwen
    image placeholders lead the user turn (the processor expands each to the image's tokens)."""
    if not use_default_template:
        return IMAGE_PLACEHOLDER * images + prompt, ""
    if family == GEMMA3:
        head = "<bos><start_of_turn>user\n" + (f"{system_prompt}\n\n" if system_prompt else "")
        return f"{head}{prompt}<end_of_turn>\n<start_of_turn>model\n", head if system_prompt else ""
    system = system_prompt or (QWEN25_DEFAULT_SYSTEM if family == QWEN25_VL else "")
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    text = f"{head}<|im_start|>user\n{IMAGE_PLACEHOLDER * images}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    if family == QWEN3:
        text += "<think>\n" if thinking else "<think>\n\n</think>\n\n"
    return text, head
