"""Streamed, interruptible text generation on ``model.generate``.

* Streaming: a streamer (transformers' ``put``/``end`` protocol) decodes the tokens so far and
  shows the *cumulative* text on the node (``ctx.progress_text``, ComfyUI's binary frame type 3)
  at most every :data:`STREAM_INTERVAL` seconds, plus the progress bar over ``max_new_tokens``.
  It runs in the generating thread: no worker thread, no queue, nothing to join.
* Interrupt: checked on every ``put`` (between tokens); generation stops by raising
  :class:`GenerationInterrupted`, which carries the text generated so far (also shown on the node).
* Speed-ups that keep greedy output identical: ``draft`` (assisted decoding with a smaller model
  sharing the tokenizer) and ``prompt_lookup_tokens`` (n-gram candidates from the prompt).
* Prefix KV reuse: the KV cache of a prompt prefix (system prompt + chat-template head) is kept in
  the model manager under its memory budget and copied into the next call with the same prefix,
  so only the new tokens are encoded — with plain decoding and with the assisted paths (see
  :func:`prefilled_first_step`).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from graph_runtime.context import Interrupted

log = logging.getLogger(__name__)
# bitsandbytes int8 on the CPU warns on every matmul that it casts fp32 inputs to fp16
warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")

STREAM_INTERVAL = 0.1
MIN_PREFIX_TOKENS = 16
"""Shorter prefixes are cheaper to recompute than to copy."""


class GenerationInterrupted(Interrupted):
    """The user stopped generation; ``partial_text`` is what had been generated."""

    def __init__(self, message: str, partial_text: str) -> None:
        super().__init__(message)
        self.partial_text = partial_text


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``temperature`` 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0
    num_beams: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": int(self.max_new_tokens), "num_beams": int(self.num_beams)}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p),
                      top_k=int(self.top_k))
            if self.min_p > 0:
                kw["min_p"] = float(self.min_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = float(self.repetition_penalty)
        return kw


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    seconds: float
    first_token_seconds: float | None
    prefix_tokens_reused: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


class NodeStreamer:
    """transformers streamer: shows cumulative text on the node, ticks progress, honours interrupts."""

    def __init__(self, tokenizer: Any, ctx: Any, max_new_tokens: int, *, skip_first: bool = True,
                 decode: Callable[[list[int]], str] | None = None, progress_offset: float = 0.0,
                 progress_total: float | None = None, interval: float = STREAM_INTERVAL) -> None:
        self.tokenizer = tokenizer
        self.ctx = ctx
        self.max_new_tokens = max(1, int(max_new_tokens))
        self.skip_first = skip_first
        self.decode = decode or (lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        self.offset = progress_offset
        self.total = progress_total if progress_total is not None else float(self.max_new_tokens)
        self.interval = interval
        self.tokens: list[int] = []
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self._last_sent = 0.0
        self._sent_text: str | None = None

    def text(self) -> str:
        return self.decode(self.tokens)

    def put(self, value: torch.Tensor) -> None:
        if self.skip_first:  # generate() first puts the prompt (or the decoder start token)
            self.skip_first = False
            return
        ids = value.reshape(-1).tolist()
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.tokens.extend(int(i) for i in ids)
        if self.ctx is None:
            return
        if self.ctx.interrupted:
            raise self._interrupted()
        now = time.perf_counter()
        if now - self._last_sent >= self.interval:
            self._last_sent = now
            self.flush()
            try:
                self.ctx.progress(self.offset + min(len(self.tokens), self.max_new_tokens), self.total)
            except Interrupted:
                raise self._interrupted() from None

    def flush(self) -> None:
        if self.ctx is None:
            return
        text = self.text()
        if text != self._sent_text:
            self._sent_text = text
            self.ctx.progress_text(text)

    def end(self) -> None:
        self.flush()

    def _interrupted(self) -> GenerationInterrupted:
        text = self.text()
        with contextlib.suppress(Exception):
            self.ctx.progress_text(text + " [interrupted]")
        return GenerationInterrupted(f"interrupted after {len(self.tokens)} generated tokens; text so far: {text!r}",
                                     text)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Seeded sampling without disturbing the caller's global RNG state."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (1 << 64))
        yield


class PrefixKV:
    """The KV cache of one prompt prefix, as kept by the model manager (sized for its budget)."""

    def __init__(self, token_ids: tuple[int, ...], cache: Any) -> None:
        self.token_ids = token_ids
        self.cache = cache

    def size_bytes(self) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total

    def fresh_copy(self) -> Any:
        return copy.deepcopy(self.cache)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_kv(models: Any, lm: Any, prefix_ids: list[int]) -> PrefixKV:
    """The KV cache of ``prefix_ids`` on ``lm``, computed once and kept by the model manager."""
    digest = hashlib.sha1(repr(prefix_ids).encode()).hexdigest()

    def compute() -> PrefixKV:
        from transformers import DynamicCache

        cache = DynamicCache(config=lm.model.config)
        ids = torch.tensor([prefix_ids], device=lm.device)
        with torch.inference_mode():
            lm.model(input_ids=ids, past_key_values=cache, use_cache=True)
        return PrefixKV(tuple(prefix_ids), cache)

    return models.get(("prefix-kv", lm.key, len(prefix_ids), digest), compute)


@contextlib.contextmanager
def prefilled_first_step(model: Any):
    """Let assisted decoding (draft model, prompt lookup) start from a pre-filled KV cache.

    transformers 5.23's assisted loop feeds the whole prompt plus the candidates in its first step
    (``next_sequence_length`` None), which with a cache that already holds the prompt's prefix
    attends to that prefix twice and changes the output.  For the duration of one ``generate``,
    the first step is given only the tokens the cache does not hold; every later step, and any call
    without a pre-filled cache, is unchanged.  (Set on the instance and removed afterwards: the model
    manager runs one generation per model at a time.)
    """
    original = model.prepare_inputs_for_generation

    @functools.wraps(original)
    def prepare(input_ids: Any, *args: Any, next_sequence_length: int | None = None, past_key_values: Any = None,
                is_first_iteration: bool | None = False, **kwargs: Any) -> Any:
        if is_first_iteration and next_sequence_length is None and past_key_values is not None:
            held = past_key_values.get_seq_length()
            if 0 < held < input_ids.shape[1]:
                next_sequence_length = input_ids.shape[1] - held
        return original(input_ids, *args, next_sequence_length=next_sequence_length, past_key_values=past_key_values,
                        is_first_iteration=is_first_iteration, **kwargs)

    model.prepare_inputs_for_generation = prepare
    try:
        yield
    finally:
        del model.prepare_inputs_for_generation


def generate(lm: Any, inputs: dict[str, Any], sampling: Sampling, ctx: Any = None, *, draft: Any = None,
             prompt_lookup_tokens: int = 0, prefix_ids: list[int] | None = None, models: Any = None,
             streamer: NodeStreamer | None = None, decode: Callable[[list[int]], str] | None = None,
             extra: dict[str, Any] | None = None, requested_at: float | None = None) -> GenerationResult:
    """Run ``lm.model.generate`` on prepared ``inputs`` (``input_ids`` …) and return the new text.

    ``prefix_ids``: when given (and long enough), the KV cache of that prefix of ``input_ids`` is
    reused from ``models`` (the model manager) or computed and stored there.
    ``requested_at``: when the caller started preparing the prompt (``time.perf_counter()``), so that
    the time to first token counts the chat template and tokenizing too.
    """
    model, tokenizer = lm.model, lm.tokenizer
    device = lm.device
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    streamer = streamer or NodeStreamer(tokenizer, ctx, sampling.max_new_tokens, decode=decode)
    kwargs = dict(inputs, **sampling.generate_kwargs())
    if tokenizer.pad_token_id is not None:
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    if draft is not None:
        kwargs["assistant_model"] = draft.model
        if draft.tokenizer.get_vocab() != tokenizer.get_vocab():  # universal assisted decoding
            kwargs.update(tokenizer=tokenizer, assistant_tokenizer=draft.tokenizer)
    elif prompt_lookup_tokens > 0:
        kwargs["prompt_lookup_num_tokens"] = int(prompt_lookup_tokens)
    reused = 0
    started = time.perf_counter()  # time to first token includes finding or computing the prefix cache
    input_ids = inputs.get("input_ids")
    if prefix_ids and models is not None and input_ids is not None and not lm.is_encoder_decoder \
            and sampling.num_beams == 1 and MIN_PREFIX_TOKENS <= len(prefix_ids) < input_ids.shape[1] \
            and input_ids[0, :len(prefix_ids)].tolist() == list(prefix_ids):
        kwargs["past_key_values"] = prefix_kv(models, lm, list(prefix_ids)).fresh_copy()
        reused = len(prefix_ids)
    kwargs.update(extra or {})
    streamer.started = started
    assisted = reused and ("assistant_model" in kwargs or "prompt_lookup_num_tokens" in kwargs)
    with torch.inference_mode(), seeded(sampling.seed, device), \
            (prefilled_first_step(model) if assisted else contextlib.nullcontext()):
        if sampling.num_beams > 1:  # beams cannot stream: transformers refuses a streamer with beam search
            if ctx is not None:
                ctx.check_interrupted()
            output = model.generate(**kwargs)
        else:
            output = model.generate(**kwargs, streamer=streamer)
    seconds = time.perf_counter() - started
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    new = sequences[0] if lm.is_encoder_decoder else sequences[0, input_ids.shape[1]:]
    ids = [int(i) for i in new.tolist()]
    text = (decode or (lambda t: tokenizer.decode(t, skip_special_tokens=True)))(ids)
    if not streamer.tokens:
        streamer.tokens = list(ids)
    streamer.end()
    since = started if requested_at is None else min(requested_at, started)
    first = None if streamer.first_token_at is None else streamer.first_token_at - since
    return GenerationResult(text=text, token_ids=ids, seconds=seconds, first_token_seconds=first,
                            prefix_tokens_reused=reused)


def thinking_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """A decode function that drops special tokens but keeps ``<think>`` / ``</think>`` markers
    (some tokenizers register them as special tokens, which ``skip_special_tokens`` would remove)."""
    markers = {}
    for marker in ("<think>", "</think>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid in tokenizer.all_special_ids:
            markers[tid] = marker
    if not markers:
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)

    def decode(ids: list[int]) -> str:
        parts, run = [], []
        for i in ids:
            if i in markers:
                parts.append(tokenizer.decode(run, skip_special_tokens=True))
                parts.append(markers[i])
                run = []
            else:
                run.append(i)
        parts.append(tokenizer.decode(run, skip_special_tokens=True))
        return "".join(parts)

    return decode


def split_thinking(text: str) -> tuple[str, str]:
    """(answer, thinking): the part after ``</think>`` and the ``<think>`` section before it."""
    if "</think>" not in text:
        return text.strip(), ""
    thinking, _, answer = text.partition("</think>")
    thinking = thinking.split("<think>", 1)[-1]
    return answer.strip(), thinking.strip()
