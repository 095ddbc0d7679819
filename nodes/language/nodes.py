"""LLMLoader and LLMNarrate: a causal LM from ``models/llm`` turning text into narration, stories or prompts."""
from __future__ import annotations

from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Boolean, CachePolicy, Combo, Float, Int, Node, Output, Resource, Seed, Socket, String
from nodes.language.transformers_lm.catalog import ModelList
from nodes.language.transformers_lm.options import ATTENTIONS, DEVICES, DTYPES, LoadOptions
from nodes.language.transformers_lm.quantization import QUANTIZATION_OPTION, validate_placement

DEFAULT_SYSTEM_PROMPT = ("You are a narrator. Rewrite the text you are given as a short, vivid narration in flowing "
                         "prose, keeping its facts and its language. Answer with the narration only.")


def loader_inputs(folder: str) -> tuple:
    return (Combo("model_name", ModelList(folder), tooltip=f"A transformers folder or a .gguf file in models/{folder}."),
            QUANTIZATION_OPTION,
            Combo("dtype", DTYPES, "auto", tooltip="Compute dtype; auto = bf16/fp16 on a GPU, fp32 on the CPU."),
            Combo("attention", ATTENTIONS, "auto"),
            Combo("device", DEVICES, "auto"))


class LLMLoader(Node):
    """Loads a causal language model (transformers folder or GGUF) offline, optionally quantized."""

    DISPLAY_NAME = "Load LLM"
    CATEGORY = "loaders/language"
    RESOURCE = Resource.GPU
    INPUTS = loader_inputs("llm")
    OUTPUTS = (Output("LLM"),)

    @classmethod
    def validate_inputs(cls, quantization: str = "none", device: str = "auto"):
        return validate_placement(quantization, device)

    def execute(self, ctx: NodeContext, model_name: str, quantization: str = "none", dtype: str = "auto",
                attention: str = "auto", device: str = "auto"):
        from nodes.language.transformers_lm.handles import load_model

        return (load_model(ctx, "llm", model_name, LoadOptions(quantization, dtype, attention, device), vision=False),)


def chat_prompt_ids(lm: Any, system_prompt: str, prompt: str, use_chat_template: bool) -> tuple[list[int], list[int]]:
    """(prompt token ids, ids of the reusable prefix): the chat template over ``[system, user]`` with the
    generation prompt added; the prefix is what it shares with the system message rendered alone (kept
    per model and system prompt, so a call with a known system prompt renders the template once)."""
    tok = lm.tokenizer
    if not use_chat_template or not getattr(tok, "chat_template", None):
        head = f"{system_prompt}\n\n" if system_prompt else ""
        ids = tok(head + prompt, add_special_tokens=True)["input_ids"]
        prefix = tok(head, add_special_tokens=True)["input_ids"] if head else []
        n = _common(ids, prefix)
        return ids, ids[:n]
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": prompt}]
    ids = _as_ids(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    if not system_prompt:
        return ids, []
    heads = lm.rendered_heads
    alone = heads.get(system_prompt)
    if alone is None:
        alone = _as_ids(tok.apply_chat_template(messages[:1], add_generation_prompt=False, tokenize=True))
        if len(heads) >= 64:
            heads.pop(next(iter(heads)))
        heads[system_prompt] = alone
    return ids, ids[:_common(ids, alone)]


def _as_ids(value: Any) -> list[int]:
    if hasattr(value, "keys") and "input_ids" in value:
        value = value["input_ids"]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if value and isinstance(value[0], list):
        value = value[0]
    return [int(i) for i in value]


def _common(a: list[int], b: list[int]) -> int:
    from nodes.language.transformers_lm.generation import common_prefix_length

    return common_prefix_length(a, b)


def narrate(ctx: NodeContext, llm: Any, prompt: str, system_prompt: str, sampling: Any, *, use_chat_template: bool,
            draft: Any = None, prompt_lookup_tokens: int = 0):
    """Generate on ``llm`` for ``[system, user]``; returns the :class:`GenerationResult` (raw text kept)."""
    import time

    import torch

    from nodes.language.transformers_lm.generation import generate, thinking_decoder

    requested_at = time.perf_counter()
    ids, prefix = chat_prompt_ids(llm, system_prompt, prompt, use_chat_template)
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    return generate(llm, inputs, sampling, ctx, draft=draft, prompt_lookup_tokens=prompt_lookup_tokens,
                    prefix_ids=prefix, models=ctx.models, decode=thinking_decoder(llm.tokenizer),
                    requested_at=requested_at)


class LLMNarrate(Node):
    """Turns text into a narration (or any answer the system prompt asks for) with an LLM; tokens stream to the node.

    A ``<think>…</think>`` section goes to the second output.  ``draft_llm`` (a smaller model with the
    same tokenizer) or ``prompt_lookup_tokens`` speed up decoding without changing greedy output.
    """

    DISPLAY_NAME = "LLM Narrate"
    CATEGORY = "text/language"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (Socket("llm", "LLM"),
              String("prompt", "", multiline=True, dynamic_prompts=False, tooltip="The text to narrate."),
              String("system_prompt", DEFAULT_SYSTEM_PROMPT, multiline=True, dynamic_prompts=False),
              Int("max_new_tokens", 256, min=1, max=32768),
              Float("temperature", 0.0, min=0.0, max=4.0, step=0.05, tooltip="0 = greedy (deterministic)."),
              Float("top_p", 0.9, min=0.0, max=1.0, step=0.01),
              Int("top_k", 0, min=0, max=1000, tooltip="0 = off."),
              Float("repetition_penalty", 1.0, min=0.5, max=3.0, step=0.01),
              Seed(),
              Boolean("use_chat_template", True),
              Socket("draft_llm", "LLM", optional=True, tooltip="A smaller model with the same tokenizer "
                                                                  "(assisted decoding)."),
              Int("prompt_lookup_tokens", 0, min=0, max=64, optional=True,
                  tooltip="Prompt-lookup decoding: candidate tokens copied from the prompt (0 = off)."))
    OUTPUTS = (Output("STRING", "text"), Output("STRING", "thinking"))

    def execute(self, ctx: NodeContext, llm, prompt: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
                max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 0.9, top_k: int = 0,
                repetition_penalty: float = 1.0, seed: int = 0, use_chat_template: bool = True, draft_llm=None,
                prompt_lookup_tokens: int = 0):
        from nodes.language.transformers_lm.generation import Sampling, split_thinking
        from nodes.language.transformers_lm.handles import loaded

        llm = loaded(llm, "llm", "an LLMLoader")
        draft_llm = None if draft_llm is None else loaded(draft_llm, "draft_llm", "an LLMLoader")
        if draft_llm is not None and prompt_lookup_tokens:
            raise NodeError("prompt_lookup_tokens: use either draft_llm or prompt lookup, not both",
                            input_name="prompt_lookup_tokens")
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            repetition_penalty=repetition_penalty, seed=seed)
        result = narrate(ctx, llm, prompt, system_prompt, sampling, use_chat_template=use_chat_template,
                         draft=draft_llm, prompt_lookup_tokens=prompt_lookup_tokens)
        ctx.record(new_tokens=len(result.token_ids), tokens_per_second=round(result.tokens_per_second, 2),
                   prefix_tokens_reused=result.prefix_tokens_reused)
        return split_thinking(result.text)
