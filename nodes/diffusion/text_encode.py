"""Prompt text → CONDITIONING tensors, with ComfyUI's prompt syntax and diffusers' exact numbers.

Two requirements pull against each other and both hold here:

* A plain prompt (every weight 1.0, ≤ 75 tokens) gives *bit-identical* embeddings to the
  diffusers pipelines' ``encode_prompt`` — same padding token, same layer (SD1.5: last layer
  after the final norm; SDXL: penultimate layer of both CLIPs, pooled from CLIP-G's projection;
  FLUX: CLIP-L ``pooler_output`` and T5 padded to 512) — so node graphs and pipelines agree.
* ComfyUI's syntax works: ``(text)`` ×1.1 per level, ``(text:1.3)`` sets the weight, ``\\(`` is a
  literal parenthesis, square brackets are plain text (as in ComfyUI), ``embedding:name`` inserts a
  textual-inversion embedding, and prompts longer than 75 tokens are encoded in 77-token chunks
  that are concatenated (pooled output from the first chunk).  A weight w moves a token's
  embedding away from the empty prompt's: ``z = (z - z_empty) · w + z_empty`` (ComfyUI's rule).
"""
from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch

from nodes.diffusion.lora import apply_patches
from nodes.diffusion.types import ModelFamily, TextEncoders

log = logging.getLogger(__name__)

CHUNK_TOKENS = 75          # CLIP: 77 with BOS and EOS
T5_MAX_LENGTH = 512        # FluxPipeline's default max_sequence_length
EMBEDDING_RX = re.compile(r"embedding:([^\s,()]+)")
_ESC_OPEN, _ESC_CLOSE = "\x00\x01", "\x00\x02"

EmbeddingLookup = Callable[[str], "Mapping[str, torch.Tensor] | None"]


# --- prompt weights --------------------------------------------------------------------------

def _split_groups(text: str) -> list[str]:
    """Top-level pieces: plain runs and balanced ``( … )`` groups (unbalanced parentheses stay text)."""
    pieces: list[str] = []
    buf, depth, start = "", 0, 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "(":
            if depth == 0:
                if buf:
                    pieces.append(buf)
                buf, start = "", i
            depth += 1
            buf += ch
        elif ch == ")" and depth > 0:
            depth -= 1
            buf += ch
            if depth == 0:
                pieces.append(buf)
                buf = ""
        else:
            buf += ch
        i += 1
    if buf:
        if depth > 0:  # an unclosed "(": keep it as text, but parse what follows it
            pieces.append("(")
            pieces.extend(_split_groups(buf[1:]))
        else:
            pieces.append(buf)
    return pieces


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _split_groups(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner, w = piece[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    w = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out.extend(_weights(inner, w))
        else:
            out.append((piece, weight))
    return out


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """``"a (red:1.2) ((cat))"`` → ``[("a ", 1.0), ("red", 1.2), (" ", 1.0), ("cat", 1.21)]`` (ComfyUI rules)."""
    escaped = text.replace("\\(", _ESC_OPEN).replace("\\)", _ESC_CLOSE)
    pieces = _weights(escaped, 1.0)
    merged: list[tuple[str, float]] = []
    for piece, w in pieces:
        piece = piece.replace(_ESC_OPEN, "(").replace(_ESC_CLOSE, ")")
        if not piece:
            continue
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + piece, w)
        else:
            merged.append((piece, w))
    return merged


# --- tokens ----------------------------------------------------------------------------------

@dataclass
class Token:
    """One position of the token sequence: a vocabulary id, or embedding vectors per encoder kind."""

    id: int
    weight: float = 1.0
    vectors: Mapping[str, torch.Tensor] | None = None  # encoder kind -> (hidden,) vector


def _embedding_vectors(name: str, lookup: EmbeddingLookup | None, kinds: Sequence[str],
                       widths: Mapping[str, int]) -> list[dict[str, torch.Tensor]] | None:
    """Per inserted position, ``{kind: vector}`` for every encoder, or None when unusable."""
    data = lookup(name) if lookup is not None else None
    if not data:
        log.warning("embedding %r not found in models/embeddings; ignored", name)
        return None
    per_kind: dict[str, torch.Tensor] = {}
    for kind in kinds:
        t = data.get(kind)
        if t is None:  # single-encoder files: match by width
            t = next((v for v in data.values() if v.shape[-1] == widths[kind]), None)
        if t is None or t.shape[-1] != widths[kind]:
            log.warning("embedding %r has no vectors of width %d for %s; ignored", name, widths[kind], kind)
            return None
        per_kind[kind] = t.reshape(-1, widths[kind])
    n = min(v.shape[0] for v in per_kind.values())
    return [{k: v[i] for k, v in per_kind.items()} for i in range(n)]


def tokenize(tokenizer, text: str, *, lookup: EmbeddingLookup | None = None, kinds: Sequence[str] = (),
             widths: Mapping[str, int] | None = None, placeholder: int = 0) -> list[Token]:
    """Weighted tokens of ``text`` (no BOS/EOS) for one tokenizer, with embeddings expanded."""
    tokens: list[Token] = []
    for piece, weight in parse_prompt_weights(text):
        pos = 0
        for m in EMBEDDING_RX.finditer(piece):
            if m.start() > pos:
                tokens += [Token(i, weight) for i in _ids(tokenizer, piece[pos:m.start()])]
            vectors = _embedding_vectors(m.group(1), lookup, kinds, widths or {})
            if vectors:
                tokens += [Token(placeholder, weight, v) for v in vectors]
            pos = m.end()
        if pos < len(piece):
            tokens += [Token(i, weight) for i in _ids(tokenizer, piece[pos:])]
    return tokens


def _ids(tokenizer, text: str) -> list[int]:
    if not text.strip():
        return []
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def clip_chunks(tokens: list[Token], bos: int, eos: int, pad: int) -> list[list[Token]]:
    """77-token chunks: BOS + ≤75 tokens + EOS + padding; an embedding is never split across chunks."""
    chunks: list[list[Token]] = []
    current: list[Token] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.vectors is not None:  # keep an embedding's consecutive vectors together
            j = i
            while j < len(tokens) and tokens[j].vectors is not None and tokens[j].weight == tok.weight:
                j += 1
            group = tokens[i:j]
            if len(current) + len(group) > CHUNK_TOKENS and current and len(group) <= CHUNK_TOKENS:
                chunks.append(current)
                current = []
            for t in group:
                if len(current) == CHUNK_TOKENS:
                    chunks.append(current)
                    current = []
                current.append(t)
            i = j
            continue
        if len(current) == CHUNK_TOKENS:
            chunks.append(current)
            current = []
        current.append(tok)
        i += 1
    if current or not chunks:
        chunks.append(current)
    out = []
    for c in chunks:
        seq = [Token(bos)] + c + [Token(eos)]
        seq += [Token(pad)] * (CHUNK_TOKENS + 2 - len(seq))
        out.append(seq)
    return out


# --- running encoders ------------------------------------------------------------------------

@contextlib.contextmanager
def _inject(encoder: torch.nn.Module, kind: str, seq: list[Token]) -> Iterator[None]:
    """Replace token-embedding rows at embedding positions (a forward hook; removed on exit)."""
    rows = [(i, t.vectors[kind]) for i, t in enumerate(seq) if t.vectors is not None]
    if not rows:
        yield
        return

    def hook(_module, _inputs, output):
        output = output.clone()
        for i, vec in rows:
            output[:, i] = vec.to(device=output.device, dtype=output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _final_norm(encoder: torch.nn.Module) -> torch.nn.Module:
    return getattr(encoder, "text_model", encoder).final_layer_norm


def _clip_forward(encoder, kind: str, seq: list[Token], family: ModelFamily, clip_skip: int):
    """(token embeddings [1, 77, H], pooled [1, P]) of one chunk, per the family's layer rules."""
    device = next(encoder.parameters()).device
    ids = torch.tensor([[t.id for t in seq]], dtype=torch.long, device=device)
    with _inject(encoder, kind, seq):
        out = encoder(input_ids=ids, output_hidden_states=True)
    pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        pooled = out.pooler_output
    hidden = out.hidden_states
    if family.is_sdxl:
        layer = -2 if clip_skip >= -1 else max(clip_skip, -(len(hidden) - 1))
        z = hidden[layer]
    elif clip_skip >= -1:
        z = out.last_hidden_state
    else:
        z = _final_norm(encoder)(hidden[max(clip_skip, -(len(hidden) - 1))])
    return z, pooled


def _t5_forward(encoder, seq: list[Token]) -> torch.Tensor:
    device = next(encoder.parameters()).device
    ids = torch.tensor([[t.id for t in seq]], dtype=torch.long, device=device)
    with _inject(encoder, "t5xxl", seq):
        return encoder(input_ids=ids)[0]


def _weight_vector(seq: list[Token], device, dtype) -> torch.Tensor:
    return torch.tensor([t.weight for t in seq], device=device, dtype=dtype)[None, :, None]


def _apply_weights(z: torch.Tensor, z_empty: torch.Tensor, seq: list[Token]) -> torch.Tensor:
    """Weighted positions move away from the empty prompt's embedding; weight-1 positions stay bit-exact."""
    w = _weight_vector(seq, z.device, z.dtype)
    return torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)


def _widths(clip: TextEncoders) -> dict[str, int]:
    return {k: int(e.get_input_embeddings().weight.shape[1]) for k, e in clip.encoders.items()}


def encode_clip(clip: TextEncoders, kind: str, text: str, lookup: EmbeddingLookup | None,
                kinds: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One CLIP encoder: (embeddings [1, 77·chunks, H], pooled [1, P]) on CPU float32."""
    encoder, tokenizer = clip.encoders[kind], clip.tokenizers[kind]
    tokens = tokenize(tokenizer, text, lookup=lookup, kinds=kinds, widths=_widths(clip))
    chunks = clip_chunks(tokens, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    zs, pooled = [], None
    with torch.inference_mode(), apply_patches(encoder, clip.patches, prefix=kind + "."):
        empty = None
        for seq in chunks:
            z, p = _clip_forward(encoder, kind, seq, clip.family, clip.clip_skip)
            if any(t.weight != 1.0 for t in seq):
                if empty is None:
                    empty = _clip_forward(encoder, kind, clip_chunks([], tokenizer.bos_token_id,
                                                                     tokenizer.eos_token_id,
                                                                     tokenizer.pad_token_id)[0],
                                          clip.family, clip.clip_skip)[0]
                z = _apply_weights(z, empty, seq)
            zs.append(z)
            pooled = p if pooled is None else pooled
    return torch.cat(zs, dim=1).float().cpu(), pooled.float().cpu()


def encode_t5(clip: TextEncoders, text: str, lookup: EmbeddingLookup | None,
              max_length: int = T5_MAX_LENGTH) -> torch.Tensor:
    """T5 embeddings [1, max_length, H]: tokens + ``</s>`` padded like FluxPipeline (truncated to fit)."""
    encoder, tokenizer = clip.encoders["t5xxl"], clip.tokenizers["t5xxl"]
    max_length = min(max_length, int(getattr(tokenizer, "model_max_length", max_length) or max_length))
    tokens = tokenize(tokenizer, text, lookup=lookup, kinds=["t5xxl"], widths=_widths(clip),
                      placeholder=tokenizer.unk_token_id or 0)[: max_length - 1]
    pad = tokenizer.pad_token_id
    seq = tokens + [Token(tokenizer.eos_token_id)]
    seq += [Token(pad)] * (max_length - len(seq))
    with torch.inference_mode(), apply_patches(encoder, clip.patches, prefix="t5xxl."):
        z = _t5_forward(encoder, seq)
        if any(t.weight != 1.0 for t in seq):
            empty = _t5_forward(encoder, [Token(tokenizer.eos_token_id)] + [Token(pad)] * (max_length - 1))
            z = _apply_weights(z, empty, seq)
    return z.float().cpu()


def encode_prompt(clip: TextEncoders, text: str, *, lookup: EmbeddingLookup | None = None,
                  t5_text: str | None = None) -> tuple[torch.Tensor, dict]:
    """(embeds, options) of one prompt for the encoders' family — the CLIPTextEncode semantics.

    ``t5_text`` (FLUX only) gives T5 a different text than CLIP-L (CLIPTextEncodeFlux).
    """
    family = clip.family
    missing = [k for k in ("clip_l", "clip_g", "t5xxl") if k in clip.encoders and k not in clip.tokenizers]
    if missing:
        raise ValueError(f"no tokenizer for {', '.join(missing)}")
    if family.is_flux:
        _, pooled = encode_clip(clip, "clip_l", text, lookup, ["clip_l"])
        embeds = encode_t5(clip, text if t5_text is None else t5_text, lookup)
        return embeds, {"pooled_output": pooled}
    if family is ModelFamily.SDXL:
        kinds = ["clip_l", "clip_g"]
        z_l, _ = encode_clip(clip, "clip_l", text, lookup, kinds)
        z_g, pooled = encode_clip(clip, "clip_g", text, lookup, kinds)
        n = min(z_l.shape[1], z_g.shape[1])
        return torch.cat([z_l[:, :n], z_g[:, :n]], dim=-1), {"pooled_output": pooled}
    if family is ModelFamily.SDXL_REFINER:
        z, pooled = encode_clip(clip, "clip_g", text, lookup, ["clip_g"])
        return z, {"pooled_output": pooled}
    z, pooled = encode_clip(clip, "clip_l", text, lookup, ["clip_l"])
    return z, {"pooled_output": pooled}
