"""Tokenizers for CLIP (shipped) and T5 (found on disk), fully offline.

Why: checkpoints carry encoder weights but no tokenizer, and we may never reach the Hugging Face
hub.  CLIP's BPE is MIT-licensed and ships with ``open_clip_torch``; we ship that one file
(``assets/clip_tokenizer/bpe_simple_vocab_16e6.txt.gz``) and derive the vocabulary/merges exactly as
OpenAI's SimpleTokenizer does, which reproduces the real token ids (``"a photo of a cat"`` →
``[49406, 320, 1125, 539, 320, 2368, 49407]``).  The T5 SentencePiece model cannot be shipped, so
it is looked up next to the encoder file and in ``models/text_encoders/t5xxl_tokenizer/``; see
:func:`find_t5_tokenizer_dir`.
"""
from __future__ import annotations

import functools
import gzip
import logging
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
CLIP_BPE = ASSETS / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_BOS, CLIP_EOS = 49406, 49407
CLIP_MAX_LENGTH = 77
# The SDXL/OpenCLIP-G tokenizer pads with "!" (id 0), CLIP-L with <|endoftext|>; diffusers'
# SDXL repos encode the same, so prompt embeddings only match with the right pad token.
CLIP_PAD_TOKENS = {"clip_l": "<|endoftext|>", "clip_g": "!"}

T5_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
T5_TOKENIZER_DIRNAMES = ("t5xxl_tokenizer", "t5_tokenizer")


class TokenizerMissing(Exception):
    """No usable tokenizer on disk; the message says where to put one."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The real CLIP BPE vocabulary (49408 entries) and merges (48894), derived from the shipped file.

    Cached because it is immutable data derived from a shipped file (0.2 s to parse).
    """
    lines = gzip.open(CLIP_BPE).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1])
    symbols = list(_bytes_to_unicode().values())
    symbols = symbols + [s + "</w>" for s in symbols]
    symbols += ["".join(m) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges  # type: ignore[return-value]


def clip_tokenizer(kind: str = "clip_l"):
    """A ``CLIPTokenizer`` with the real vocabulary; ``kind`` picks the pad token (clip_l / clip_g)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CLIP_MAX_LENGTH,
                         pad_token=CLIP_PAD_TOKENS[kind])


def find_t5_tokenizer_dir(encoder_file: Path, search_dirs: Iterable[Path]) -> Path | None:
    """Where a T5 tokenizer for ``encoder_file`` lives, or None.

    Looked for, in order: ``<file stem>_tokenizer/`` next to the file (a per-file tokenizer,
    e.g. the tiny test models), then ``t5xxl_tokenizer/`` (or ``t5_tokenizer/``) in each of
    ``search_dirs`` (the text_encoders folders).  A folder counts if it holds ``tokenizer.json``
    or ``spiece.model``.
    """
    candidates = [encoder_file.parent / f"{encoder_file.stem}_tokenizer"]
    for d in search_dirs:
        candidates += [Path(d) / name for name in T5_TOKENIZER_DIRNAMES]
    for c in candidates:
        if c.is_dir() and any((c / f).is_file() for f in T5_TOKENIZER_FILES):
            return c
    return None


def t5_tokenizer_help(encoder_file: Path, search_dirs: Iterable[Path]) -> str:
    dirs = [str(Path(d) / T5_TOKENIZER_DIRNAMES[0]) for d in search_dirs]
    return (f"no T5 tokenizer found for {encoder_file.name}. T5 tokenizer files cannot be bundled; copy the "
            f"T5-XXL tokenizer (spiece.model, or tokenizer.json, from the 'tokenizer_2' folder of a FLUX diffusers "
            f"repo or google/t5-v1_1-xxl) into {dirs[0] if dirs else 'models/text_encoders/t5xxl_tokenizer'}/ "
            f"(or into {encoder_file.parent / (encoder_file.stem + '_tokenizer')}/ for this file only).")


def load_t5_tokenizer(folder: Path, max_length: int = 512):
    """Load a T5 tokenizer from a folder holding ``tokenizer.json`` or ``spiece.model``."""
    from transformers import T5TokenizerFast

    folder = Path(folder)
    kwargs = dict(model_max_length=max_length, legacy=True)
    if (folder / "tokenizer.json").is_file():
        tok = T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                              vocab_file=str(folder / "spiece.model") if (folder / "spiece.model").is_file() else None,
                              extra_ids=0 if _has_no_extra_ids(folder) else 100, **kwargs)
    else:
        tok = T5TokenizerFast(vocab_file=str(folder / "spiece.model"), **kwargs)
    return tok


def _has_no_extra_ids(folder: Path) -> bool:
    """The real T5 tokenizer.json already lists its 100 sentinel tokens; tiny ones have none."""
    import json

    try:
        data = json.loads((folder / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return True
    return not any(t.get("content", "").startswith("<extra_id_") for t in data.get("added_tokens", []))
