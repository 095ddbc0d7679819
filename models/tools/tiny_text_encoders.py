"""Tiny single-file LLM text encoders in ComfyUI's layout (``models/text_encoders/*.safetensors``).

The files ``CLIPLoader`` → ``TextGenerate`` workflows load: one safetensors per model with
transformers' tensor names (``model.embed_tokens.weight``, ``model.layers.N…``, ``lm_head.weight``
only when untied), bf16 like the released files, a stand-in vision tower beside the language model,
and no config (the loader reads the architecture from the shapes):

* ``tiny-qwen2.5-vl-te.safetensors``: Qwen2.5-VL — its Qwen2 language model (q/k/v biases, tied
  embeddings) as ``model.*`` and a real vision tower as ``visual.*`` (:data:`QWEN25_VISION`); the real
  Qwen tokenizer's 151,669 tokens fit its vocab.
* ``tiny-qwen3-te.safetensors``: Qwen3 (``q_norm``/``k_norm``, head size ≠ hidden / heads,
  an untied ``lm_head``).
* ``tiny-gemma3-te.safetensors``: Gemma-3 (four norms per block, sliding + full attention layers,
  ``vision_model.*`` + ``multi_modal_projector.*``) with its SentencePiece model stored inside as
  the ``spiece_model`` uint8 tensor, ComfyUI's convention — built here as a protobuf, without the
  sentencepiece package.

:data:`CONFIGS` holds the configs they were built from, so tests can check what the loader infers.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

SEED = 9876
QWEN_VOCAB = 151936
_CORPUS = ("The quick brown fox jumps over the lazy dog. A photo of a cat on a wooden table by the window. "
           "Describe this image in detail. Write a short story about a lighthouse in a storm. The capital of "
           "France is Paris. Once upon a time there was a small village in the mountains. ") * 4


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


QWEN25_VISION = dict(depth=2, hidden_size=80, intermediate_size=64, out_hidden_size=32, num_heads=1, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[],
                     in_channels=3)
"""The tiny Qwen2.5-VL vision tower (heads of 80 like the real one; full attention every 8th block: none here)."""
QWEN_VISION_TOKENS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                      "vision_end_token_id": 151653}
"""The real Qwen tokenizer's ids of ``<|image_pad|>``, ``<|video_pad|>``, ``<|vision_start|>``, ``<|vision_end|>``."""


def qwen25_vl_config(text: object) -> object:
    """The whole tiny Qwen2.5-VL: ``text`` (a Qwen2Config) with 3-D rope, and :data:`QWEN25_VISION`."""
    from transformers import Qwen2_5_VLConfig

    text_dict = text.to_dict()
    text_dict["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}
    return Qwen2_5_VLConfig(text_config=text_dict, vision_config=dict(QWEN25_VISION), tie_word_embeddings=True,
                            **QWEN_VISION_TOKENS)


def configs(gemma_vocab: int) -> dict[str, object]:
    from transformers import Gemma3TextConfig, Qwen2Config, Qwen3Config

    common = dict(rms_norm_eps=1e-6, initializer_range=0.3)
    return {
        "tiny-qwen2.5-vl-te.safetensors": Qwen2Config(
            vocab_size=QWEN_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=128000, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common),
        "tiny-qwen3-te.safetensors": Qwen3Config(
            vocab_size=QWEN_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=40960, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common),
        "tiny-gemma3-te.safetensors": Gemma3TextConfig(
            vocab_size=gemma_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=512,
            max_position_embeddings=32768, tie_word_embeddings=True,
            layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(6)],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}, **common),
    }


def gemma_spiece_model(vocab_size: int = 480) -> bytes:
    """A SentencePiece BPE ``ModelProto`` with Gemma's special pieces and byte fallback (serialized)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import import_protobuf

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    raw.train_from_iterator([_CORPUS], trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    learned = [p for p, _ in sorted(raw.get_vocab().items(), key=lambda kv: kv[1])]
    pb = import_protobuf()
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 3, 2, 1
    proto.trainer_spec.pad_id, proto.trainer_spec.unk_piece = 0, "<unk>"
    kinds = pb.ModelProto.SentencePiece
    pieces = [("<pad>", kinds.CONTROL), ("<eos>", kinds.CONTROL), ("<bos>", kinds.CONTROL), ("<unk>", kinds.UNKNOWN),
              ("<start_of_turn>", kinds.USER_DEFINED), ("<end_of_turn>", kinds.USER_DEFINED)]
    pieces += [(f"<0x{b:02X}>", kinds.BYTE) for b in range(256)]
    seen = {p for p, _ in pieces}
    pieces += [(p, kinds.NORMAL) for p in learned if p not in seen]
    for i, (piece, kind) in enumerate(pieces):
        entry = proto.pieces.add()
        entry.piece, entry.type = piece, kind
        entry.score = -float(i) if kind == kinds.NORMAL else 0.0
    return proto.SerializeToString()


def _language_state(model: torch.nn.Module, tied: bool) -> dict[str, torch.Tensor]:
    """The model's tensors under ComfyUI's single-file names (a VL model's halves un-nested), in bf16."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("inv_freq"):
            continue
        if k.startswith("model.visual."):
            k = k[len("model."):]
        elif k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        sd[k] = v.detach().to(torch.bfloat16).contiguous()
    if tied:
        sd.pop("lm_head.weight", None)
    return sd


def _vision_stand_in(prefixes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen).to(torch.bfloat16) for k, shape in prefixes.items()}


def write_tiny_text_encoders(models_dir: Path) -> list[Path]:
    """Write the three tiny LLM text encoders under ``models_dir/text_encoders``."""
    from safetensors.torch import save_file
    from transformers import Gemma3ForCausalLM, Qwen2_5_VLForConditionalGeneration, Qwen3ForCausalLM

    folder = Path(models_dir) / "text_encoders"
    folder.mkdir(parents=True, exist_ok=True)
    spiece = gemma_spiece_model()
    from nodes.language.text_encoders.tokenizers import gemma_tokenizer

    cfgs = configs(gemma_vocab=len(gemma_tokenizer(spiece)))
    builders = {"tiny-qwen2.5-vl-te.safetensors": lambda c: Qwen2_5_VLForConditionalGeneration(qwen25_vl_config(c)),
                "tiny-qwen3-te.safetensors": Qwen3ForCausalLM, "tiny-gemma3-te.safetensors": Gemma3ForCausalLM}
    vision = {"tiny-gemma3-te.safetensors": {"vision_model.embeddings.patch_embedding.weight": (16, 3, 14, 14),
                                             "multi_modal_projector.mm_input_projection_weight": (16, 32)}}
    written = []
    for i, (name, cfg) in enumerate(cfgs.items()):
        with _seeded(SEED + i):
            model = builders[name](cfg).eval()
        sd = _language_state(model, cfg.tie_word_embeddings)
        sd.update(_vision_stand_in(vision.get(name, {}), SEED + 100 + i))
        if name.startswith("tiny-gemma3"):
            sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8).clone()
        path = folder / name
        save_file(sd, str(path), metadata={"format": "pt"})
        written.append(path)
    return written
