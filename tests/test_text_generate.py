"""ComfyUI's ``TextGenerate`` on single-file LLM text encoders loaded by ``CLIPLoader``: the architecture read
from the shapes matches the one the file was made from, greedy output equals transformers' own ``generate``,
the system prompt's KV cache is reused, ComfyUI's schema (dynamic combo, autogrow) round-trips through
object_info, validation and a UI workflow (the official Qwen3 template), and bad input gets clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graph_runtime.context import NodeError
from graph_runtime.executor import Executor
from graph_runtime.model_manager import ModelManager
from graph_runtime.node_info import object_info
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import build_registry
from graph_runtime.validation import PromptValidator
from nodes.diffusion import model_files
from nodes.language.text_encoders.layouts import detect
from nodes.language.text_generate import TextGenerate
from nodes.loaders import CLIPLoader
from tests.lm_fixtures import Recorder, make_ctx, tiny_lm_paths

ENCODERS = ("tiny-qwen2.5-vl-te.safetensors", "tiny-qwen3-te.safetensors", "tiny-gemma3-te.safetensors")
SYSTEM = ("You are a careful writer who answers in one short paragraph, describing the scene in the picture "
          "with calm and precise words.")
PACKS = ["nodes.primitives", "nodes.loaders", "nodes.text.display", "nodes.language.text_generate"]


@pytest.fixture(scope="module")
def te_paths(tiny_models_dir: Path, tmp_path_factory) -> FolderPaths:
    return tiny_lm_paths(tiny_models_dir, tmp_path_factory.mktemp("te"))


@pytest.fixture(scope="module")
def manager() -> ModelManager:
    return ModelManager()


def expected_prompt(name: str, prompt: str, system: str) -> str:
    """The chat format written out by hand, per family (what the model was instruction-tuned on)."""
    if "gemma3" in name:
        return f"<bos><start_of_turn>user\n{system}\n\n{prompt}<end_of_turn>\n<start_of_turn>model\n"
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    return text + ("<think>\n\n</think>\n\n" if "qwen3" in name else "")


def reference_text(path: Path, tokenizer, text: str, max_new_tokens: int) -> str:
    """transformers alone: the architecture the file was built from, its tensors in fp32, greedy generate."""
    from transformers import Gemma3ForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

    from models.tools.tiny_text_encoders import configs

    config = configs(gemma_vocab=len(tokenizer))[path.name]
    cls = {"qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM, "gemma3_text": Gemma3ForCausalLM}[config.model_type]
    model = cls(config).eval()
    tensors = model_files.load(path, lambda k: k.startswith(("model.", "lm_head.")))
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<eos>", "<end_of_turn>")]
    stops = [s for s in stops if isinstance(s, int) and s != tokenizer.unk_token_id]
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def load_clip(paths: FolderPaths, manager: ModelManager, name: str, clip_type: str = "stable_diffusion"):
    return CLIPLoader().execute(make_ctx(paths, manager), name, clip_type)[0]


def test_layout_read_from_shapes_matches_the_model_the_file_was_made_from(te_paths: FolderPaths) -> None:
    from models.tools.tiny_text_encoders import configs

    for name in ENCODERS:
        path = te_paths.model_path("text_encoders", name)
        layout = detect(model_files.inspect(path)[0])
        config = configs(gemma_vocab=layout.vocab_size)[name]
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        assert (layout.family, layout.hidden_size, layout.num_layers, layout.num_heads, layout.num_kv_heads,
                layout.head_dim, layout.intermediate_size, layout.tied) == (
            {"qwen2": "qwen2.5-vl", "qwen3": "qwen3", "gemma3_text": "gemma3"}[config.model_type],
            config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            head_dim, config.intermediate_size, config.tie_word_embeddings), name
        assert layout.has_vision == (name != "tiny-qwen3-te.safetensors")
    # diffusion text encoders are not language models: CLIPLoader keeps its usual path for them
    assert detect(model_files.inspect(te_paths.model_path("text_encoders", "tiny-clip-l.safetensors"))[0]) is None


@pytest.mark.parametrize("name", ENCODERS)
def test_greedy_text_generate_equals_transformers_generate(te_paths: FolderPaths, manager: ModelManager,
                                                           name: str) -> None:
    clip = load_clip(te_paths, manager, name, "qwen_image")
    prompt = "Describe a lighthouse in a storm."
    rec = Recorder()
    text, thinking = TextGenerate().execute(make_ctx(te_paths, manager, rec), clip, prompt=prompt, max_length=12,
                                            sampling_mode="off", system_prompt=SYSTEM)
    lm = clip.language_model()
    expected = reference_text(te_paths.model_path("text_encoders", name), lm.tokenizer,
                              expected_prompt(name, prompt, SYSTEM), 12)
    assert text == expected and text, (text, expected)
    assert thinking == ""
    assert rec.texts, "tokens were not streamed to the node"


def test_qwen25_vl_file_sees_images_like_transformers(te_paths: FolderPaths, manager: ModelManager) -> None:
    """The Qwen2.5-VL file's vision tower runs: two images in TextGenerate's autogrow slots give exactly what
    transformers' Qwen2.5-VL (built from the file's source config) generates with its processor."""
    import numpy as np
    from transformers import (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor,
                              Qwen2VLVideoProcessor)

    from models.tools.tiny_text_encoders import configs, qwen25_vl_config

    name = "tiny-qwen2.5-vl-te.safetensors"
    clip = load_clip(te_paths, manager, name)
    rng = np.random.default_rng(3)
    pictures = [rng.integers(0, 256, (84, 112, 3), dtype=np.uint8), rng.integers(0, 256, (56, 140, 3), dtype=np.uint8)]
    tensors = [torch.from_numpy(p.astype(np.float32) / 255.0)[None] for p in pictures]
    text, _ = TextGenerate().execute(make_ctx(te_paths, manager), clip, prompt="What differs?", max_length=10,
                                     sampling_mode="off", **{"images.image_0": tensors[0], "images.image_1": tensors[1]})
    tok = clip.language_model().tokenizer
    model = Qwen2_5_VLForConditionalGeneration(qwen25_vl_config(configs(0)[name])).eval()
    sd = model_files.load(te_paths.model_path("text_encoders", name))
    model.load_state_dict({("model." + k if k.startswith("visual.") else "model.language_model." + k[6:]): v.float()
                           for k, v in sd.items()}, strict=False)
    model.tie_weights()
    sizes = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(**sizes))
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    prompt = (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{vision}{vision}"
              "What differs?<|im_end|>\n<|im_start|>assistant\n")
    from nodes.image import tensor_to_pil

    enc = processor(text=[prompt], images=[tensor_to_pil(t[0]).convert("RGB") for t in tensors], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=10, do_sample=False, eos_token_id=[151645, 151643])
    expected = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert text == expected and text
    without, _ = TextGenerate().execute(make_ctx(te_paths, manager), clip, prompt="What differs?", max_length=10,
                                        sampling_mode="off")
    assert without != text  # the pictures reach the model


def test_second_call_reuses_the_system_prompt_cache_with_the_same_output(te_paths: FolderPaths) -> None:
    manager = ModelManager()
    clip = load_clip(te_paths, manager, "tiny-qwen3-te.safetensors")
    model = clip.language_model().model
    fed: list[int] = []  # tokens fed to the model per forward call
    hook = model.register_forward_pre_hook(lambda m, args, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        firsts = []
        for prompt in ("Describe a harbour at dawn.", "Describe a market at noon."):
            fed.clear()
            out = TextGenerate().execute(make_ctx(te_paths, manager), clip, prompt=prompt, max_length=10,
                                         sampling_mode="off", system_prompt=SYSTEM)
            firsts.append((fed[0], fed[1], out[0]))
    finally:
        hook.remove()
    tok = clip.language_model().tokenizer
    head = len(tok(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n", add_special_tokens=False)["input_ids"])
    full = len(tok(expected_prompt("qwen3", "Describe a market at noon.", SYSTEM), add_special_tokens=False)["input_ids"])
    # first call: the system head is encoded once (then kept); second call: only the new tokens are encoded
    assert firsts[0][0] == head and head > 16
    assert firsts[1][0] == full - head
    expected = reference_text(te_paths.model_path("text_encoders", "tiny-qwen3-te.safetensors"), tok,
                              expected_prompt("qwen3", "Describe a market at noon.", SYSTEM), 10)
    assert firsts[1][2] == expected and firsts[0][2] != firsts[1][2]


def test_sampling_on_is_reproducible_per_seed(te_paths: FolderPaths, manager: ModelManager) -> None:
    clip = load_clip(te_paths, manager, "tiny-qwen2.5-vl-te.safetensors")

    def run(seed: int, **extra) -> str:
        mode = {"sampling_mode.temperature": 1.5, "sampling_mode.top_k": 64, "sampling_mode.top_p": 0.95,
                "sampling_mode.min_p": 0.0, "sampling_mode.repetition_penalty": 1.05, "sampling_mode.seed": seed}
        mode.update(extra)
        return TextGenerate().execute(make_ctx(te_paths, manager), clip, prompt="Write a story.", max_length=16,
                                      sampling_mode="on", **mode)[0]

    assert run(1) == run(1)
    assert len({run(s) for s in (1, 2, 3)}) > 1
    # a strong presence penalty forbids repeating a generated token
    ids = clip.language_model().tokenizer(run(4, **{"sampling_mode.presence_penalty": 5.0,
                                                    "sampling_mode.temperature": 0.01}))["input_ids"]
    assert len(ids) >= 8


def test_thinking_split_like_comfyui() -> None:
    from nodes.language.text_generate import split_reasoning

    assert split_reasoning("<think>plan</think> answer", "…assistant\n") == ("answer", "plan")
    assert split_reasoning("plan</think>answer", "<|im_start|>assistant\n<think>\n") == ("answer", "plan")
    assert split_reasoning("half a thought", "<think>\n") == ("", "half a thought")
    assert split_reasoning("a </think> b", "no thinking\n") == ("a </think> b", "")


def test_errors_name_the_input(te_paths: FolderPaths, manager: ModelManager, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    diffusion_clip = load_clip(te_paths, manager, "tiny-clip-l.safetensors")
    with pytest.raises(NodeError) as err:
        TextGenerate().execute(make_ctx(te_paths, manager), diffusion_clip, prompt="hi", sampling_mode="off")
    assert err.value.input_name == "clip" and "Qwen2.5-VL, Qwen3 or Gemma-3" in str(err.value)
    clip = load_clip(te_paths, manager, "tiny-gemma3-te.safetensors")
    with pytest.raises(NodeError) as err:
        TextGenerate().execute(make_ctx(te_paths, manager), clip, prompt="hi", sampling_mode="off",
                               **{"images.image_0": torch.zeros(1, 8, 8, 3)})
    assert err.value.input_name == "images" and "text only" in str(err.value)
    with pytest.raises(NodeError) as err:
        TextGenerate().execute(make_ctx(te_paths, manager), load_clip(te_paths, manager,
                                                                      "tiny-qwen2.5-vl-te.safetensors"),
                               prompt="hi", sampling_mode="off", video=torch.zeros(4, 8, 8, 3))
    assert err.value.input_name == "video"
    # a quantized (int8 / w4a8) Qwen3 file is refused by name, not loaded wrongly
    tensors = model_files.load(te_paths.model_path("text_encoders", "tiny-qwen3-te.safetensors"))
    tensors["model.layers.0.mlp.down_proj.weight_scale"] = torch.ones(1)
    folder = te_paths.model_dirs("text_encoders")[0]
    save_file(tensors, str(folder / "qwen3_int8.safetensors"))
    try:
        with pytest.raises(NodeError) as err:
            load_clip(te_paths, manager, "qwen3_int8.safetensors")
        assert err.value.input_name == "clip_name" and "quantized" in str(err.value)
    finally:
        (folder / "qwen3_int8.safetensors").unlink()


def test_object_info_has_comfyui_v3_shape_and_validation_follows_the_chosen_option(te_paths: FolderPaths) -> None:
    registry = build_registry(PACKS)
    info = object_info(registry, te_paths)["TextGenerate"]
    assert info["input_order"] == {"required": ["clip", "prompt", "max_length", "sampling_mode"],
                                   "optional": ["images", "video", "audio", "thinking", "use_default_template",
                                                "mtp", "system_prompt"]}
    mode = info["input"]["required"]["sampling_mode"]
    assert mode[0] == "COMFY_DYNAMICCOMBO_V3" and [o["key"] for o in mode[1]["options"]] == ["on", "off"]
    on = mode[1]["options"][0]["inputs"]
    assert list(on["required"]) == ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed"]
    assert list(on["optional"]) == ["presence_penalty"] and on["required"]["top_k"][1]["default"] == 64
    images = info["input"]["optional"]["images"]
    assert images[0] == "COMFY_AUTOGROW_V3" and images[1]["template"]["prefix"] == "image_"
    assert images[1]["template"]["input"] == {"required": {"image": ["IMAGE", {"tooltip": "Image input"}]}}
    assert info["output_name"] == ["generated_text", "thinking"]

    validator = PromptValidator(registry, te_paths)
    base = {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-qwen3-te.safetensors",
                                                         "type": "stable_diffusion"}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    off = dict(base, **{"2": {"class_type": "TextGenerate", "inputs": {
        "clip": ["1", 0], "prompt": "hi", "max_length": 4, "sampling_mode": "off"}}})
    assert validator.validate(off).ok
    on_missing = dict(base, **{"2": {"class_type": "TextGenerate", "inputs": {
        "clip": ["1", 0], "prompt": "hi", "max_length": 4, "sampling_mode": "on", "sampling_mode.temperature": 0.5}}})
    result = validator.validate(on_missing)
    assert not result.ok
    missing = {e["extra_info"]["input_name"] for e in result.node_errors["2"]["errors"]}
    assert missing == {"sampling_mode.top_k", "sampling_mode.top_p", "sampling_mode.min_p",
                       "sampling_mode.repetition_penalty", "sampling_mode.seed"}
    bad_key = dict(base, **{"2": {"class_type": "TextGenerate", "inputs": {
        "clip": ["1", 0], "prompt": "hi", "max_length": 4, "sampling_mode": "sometimes"}}})
    assert not validator.validate(bad_key).ok


def test_official_qwen3_template_loads_and_runs(te_paths: FolderPaths) -> None:
    """The frontend's "Qwen3 text generation" template (CLIPLoader type ltxv → TextGenerate → PreviewAny), with the
    tiny Qwen3 file in place of qwen_3_4b.safetensors, converts from the UI format and runs."""
    from graph_runtime.workflow_files.ui_to_api import convert_ui_workflow

    templates = pytest.importorskip("comfyui_workflow_templates_json")
    workflow = json.loads((Path(templates.__file__).parent / "templates" / "llm_qwen3_text_gen.json").read_text())
    registry = build_registry(PACKS)
    for node in workflow["nodes"]:
        if node["type"] == "CLIPLoader":
            node["widgets_values"][0] = "tiny-qwen3-te.safetensors"
        if node["type"] == "TextGenerate":
            node["widgets_values"][1] = 8  # max_length
    prompt = convert_ui_workflow(workflow, object_info(registry, te_paths)).prompt
    generate = next(v for v in prompt.values() if v["class_type"] == "TextGenerate")
    assert generate["inputs"]["sampling_mode"] == "on" and generate["inputs"]["sampling_mode.top_k"] == 64
    assert generate["inputs"]["sampling_mode.seed"] == 0 and generate["inputs"]["max_length"] == 8
    checked = PromptValidator(registry, te_paths).validate(prompt)
    assert checked.ok, checked.node_errors
    executor = Executor(registry, te_paths)
    report = executor.execute("t1", checked.prompt, checked.outputs)
    assert report.ok, report.error
    preview = next(k for k, v in prompt.items() if v["class_type"] == "PreviewAny")
    first = report.outputs[preview]["text"][0]
    assert isinstance(first, str) and first
    # Run again with a new seed: a sampled run, so a new seed gives a new text (and no cached output)
    generate["inputs"]["sampling_mode.seed"] = 7
    again = executor.execute("t2", PromptValidator(registry, te_paths).validate(prompt).prompt, checked.outputs)
    assert again.ok and again.outputs[preview]["text"][0] != first


def test_generated_token_penalty_matches_a_naive_reference() -> None:
    """Repetition / presence penalties over generated tokens only, against a per-token loop (hypothesis)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from nodes.language.text_generate import GeneratedTokenPenalty

    @settings(max_examples=60, deadline=None)
    @given(prompt=st.lists(st.integers(0, 15), min_size=1, max_size=6),
           generated=st.lists(st.integers(0, 15), max_size=8),
           logits=st.lists(st.floats(-5, 5, allow_nan=False), min_size=16, max_size=16),
           repetition=st.floats(0.5, 3.0), presence=st.floats(0.0, 3.0))
    def check(prompt, generated, logits, repetition, presence):
        ids = torch.tensor([prompt + generated])
        scores = torch.tensor([logits], dtype=torch.float32)
        got = GeneratedTokenPenalty(len(prompt), repetition, presence)(ids, scores)[0].tolist()
        want = list(logits)
        for t in set(generated):
            value = want[t]
            value = value * repetition if value < 0 else value / repetition
            want[t] = value - presence
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)

    check()
