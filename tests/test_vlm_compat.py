"""The nodes of the ComfyUI packs users' workflows hold — ``AILab_QwenVL`` (1038lab/ComfyUI-QwenVL) and kijai's
``DownloadAndLoadFlorence2Model`` + ``Florence2Run`` — on the tiny Qwen2.5-VL and Florence-2: the packs' widgets
in their order, validation of saved widget values, and output equal to transformers' own ``generate``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graph_runtime.context import NodeError
from graph_runtime.executor import Executor
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import build_registry
from graph_runtime.validation import PromptValidator
from nodes.vision_language.compat import (QWENVL_PRESETS, AILab_QwenVL, DownloadAndLoadFlorence2Model, Florence2Run)
from nodes.vision_language.nodes import VLMCaption, VLMLoader
from tests.lm_fixtures import make_ctx, tiny_lm_paths
from tests.test_vlm_llm import as_tensor, picture, reference_caption

PACKS = ["nodes.primitives", "nodes.image", "nodes.text.display", "nodes.vision_language.compat"]


@pytest.fixture(scope="module")
def lm_paths(tiny_models_dir: Path, tmp_path_factory) -> FolderPaths:
    return tiny_lm_paths(tiny_models_dir, tmp_path_factory.mktemp("compat"))


@pytest.fixture(scope="module")
def manager() -> ModelManager:
    return ModelManager()


def widget_names(node: type) -> list[str]:
    return [i.name for i in node.INPUTS if i.is_widget]


def reference_beams(folder: Path, image: Image.Image, task: str, max_new_tokens: int, num_beams: int) -> str:
    """transformers alone: Florence-2 beam search (no sampling) and its post-processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True).eval()
    inputs = processor(text=task, images=image, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams)
    raw = processor.batch_decode(out, skip_special_tokens=False)[0]
    return processor.post_process_generation(raw, task=task, image_size=image.size)[task].strip()


# -- AILab_QwenVL ------------------------------------------------------------------------------------

def test_qwenvl_has_the_packs_widgets_and_outputs() -> None:
    assert widget_names(AILab_QwenVL) == ["model_name", "quantization", "attention_mode", "preset_prompt",
                                          "custom_prompt", "max_tokens", "keep_model_loaded", "seed"]
    inputs = {i.name: i for i in AILab_QwenVL.INPUTS}
    assert tuple(inputs["quantization"].combo_options()) == ("4-bit (VRAM-friendly)", "8-bit (Balanced)", "None (FP16)")
    assert tuple(inputs["attention_mode"].combo_options()) == ("auto", "sage", "flash_attention_2", "sdpa")
    assert inputs["preset_prompt"].default == "🖼️ Detailed Description"
    assert (inputs["max_tokens"].default, inputs["max_tokens"].min, inputs["max_tokens"].max) == (512, 64, 2048)
    assert inputs["image"].optional and inputs["video"].optional
    assert [o.name for o in AILab_QwenVL.OUTPUTS] == ["RESPONSE"] and AILab_QwenVL.CATEGORY == "🧪AILab/QwenVL"


def test_qwenvl_custom_prompt_equals_transformers_and_the_preset_equals_vlm_caption(lm_paths, manager) -> None:
    ctx = make_ctx(lm_paths, manager)
    image = picture(11)
    prompt = "Describe the colours."
    (response,) = AILab_QwenVL().execute(ctx, "tiny-qwen2.5-vl", custom_prompt=prompt, max_tokens=64, image=as_tensor(image))
    assert response == reference_caption(lm_paths.models_dir / "vlm" / "tiny-qwen2.5-vl", image, prompt, 64)
    vlm = VLMLoader().execute(ctx, "tiny-qwen2.5-vl")[0].get()
    preset = "🏷️ Tags"
    (tags,) = AILab_QwenVL().execute(ctx, "tiny-qwen2.5-vl", preset_prompt=preset, max_tokens=64,
                                     image=as_tensor(image))
    (expected,), = VLMCaption().execute(ctx, vlm, as_tensor(image), QWENVL_PRESETS[preset], max_new_tokens=64)
    assert tags == expected


def test_qwenvl_video_describes_four_frames_spread_over_the_clip(lm_paths, manager) -> None:
    ctx = make_ctx(lm_paths, manager)
    frames = [picture(20 + i, (48, 40)) for i in range(7)]
    (response,) = AILab_QwenVL().execute(ctx, "tiny-qwen2.5-vl", custom_prompt="What happens?", max_tokens=64,
                                         video=as_tensor(*frames))
    vlm = VLMLoader().execute(ctx, "tiny-qwen2.5-vl")[0].get()
    picked = [frames[i] for i in (0, 2, 4, 6)]
    singles = [VLMCaption().execute(ctx, vlm, as_tensor(f), "What happens?", max_new_tokens=64)[0][0] for f in picked]
    assert response == "\n\n".join(singles)
    with pytest.raises(NodeError) as info:
        AILab_QwenVL().execute(ctx, "tiny-qwen2.5-vl")
    assert info.value.input_name == "image"


def test_a_saved_qwenvl_prompt_validates_and_runs_through_the_executor(lm_paths) -> None:
    Image.fromarray(np.asarray(picture(12))).save(lm_paths.input_dir / "photo.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
              "2": {"class_type": "AILab_QwenVL", "inputs": {
                  "model_name": "tiny-qwen2.5-vl", "quantization": "None (FP16)", "attention_mode": "sdpa",
                  "preset_prompt": "🖼️ Simple Description", "custom_prompt": "", "max_tokens": 64,
                  "keep_model_loaded": True, "seed": 1, "image": ["1", 0]}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    registry = build_registry(PACKS)
    checked = PromptValidator(registry, lm_paths).validate(prompt)
    assert checked.ok, checked.summary()
    report = Executor(registry, lm_paths).execute("q", checked.prompt, checked.outputs)
    assert report.ok, report.error
    expected = reference_caption(lm_paths.models_dir / "vlm" / "tiny-qwen2.5-vl", picture(12),
                                 QWENVL_PRESETS["🖼️ Simple Description"], 64)
    assert report.outputs["3"] == {"text": [expected]}
    prompt["2"]["inputs"]["quantization"] = "2-bit"
    bad = PromptValidator(registry, lm_paths).validate(prompt)
    assert not bad.ok and "quantization" in str(bad.node_errors["2"])


# -- Florence-2 ---------------------------------------------------------------------------------------

def test_florence_nodes_have_the_packs_widgets_and_outputs() -> None:
    assert widget_names(DownloadAndLoadFlorence2Model) == ["model", "precision", "attention", "convert_to_safetensors"]
    assert widget_names(Florence2Run) == ["text_input", "task", "fill_mask", "keep_model_loaded", "max_new_tokens",
                                          "num_beams", "do_sample", "output_mask_select", "seed"]
    tasks = {i.name: i for i in Florence2Run.INPUTS}["task"].combo_options()
    assert {"caption", "detailed_caption", "more_detailed_caption", "ocr", "ocr_with_region", "region_caption",
            "docvqa", "prompt_gen_tags"} <= set(tasks)
    assert [o.name for o in Florence2Run.OUTPUTS] == ["image", "mask", "caption", "data"]
    assert [o.type for o in DownloadAndLoadFlorence2Model.OUTPUTS] == ["FL2MODEL"]


@pytest.mark.parametrize("task,token", [("caption", "<CAPTION>"), ("ocr", "<OCR>"),
                                        ("more_detailed_caption", "<MORE_DETAILED_CAPTION>")])
def test_florence2_run_greedy_equals_transformers(task, token, lm_paths, manager) -> None:
    ctx = make_ctx(lm_paths, manager)
    model, = DownloadAndLoadFlorence2Model().execute(ctx, "tiny-florence-2", precision="fp32")
    image = picture(13)
    out_image, mask, caption, data = Florence2Run().execute(ctx, as_tensor(image), model, task=task,
                                                            max_new_tokens=12, num_beams=1, do_sample=False)
    assert caption == data == reference_caption(lm_paths.models_dir / "vlm" / "tiny-florence-2", image, token, 12)
    assert out_image.shape == (1, 100, 140, 3) and mask.shape == (1, 100, 140)


def test_florence2_run_beams_equal_transformers_and_a_batch_gives_a_list(lm_paths, manager) -> None:
    ctx = make_ctx(lm_paths, manager)
    model, = DownloadAndLoadFlorence2Model().execute(ctx, "tiny-florence-2", precision="fp32")
    images = [picture(14), picture(15)]
    _, masks, captions, data = Florence2Run().execute(ctx, as_tensor(*images), model, task="caption",
                                                      max_new_tokens=10, num_beams=3, do_sample=False)
    folder = lm_paths.models_dir / "vlm" / "tiny-florence-2"
    assert captions == data == [reference_beams(folder, i, "<CAPTION>", 10, 3) for i in images]
    assert masks.shape[0] == 2
    sampled = [Florence2Run().execute(ctx, as_tensor(images[0]), model, task="caption", max_new_tokens=10,
                                      num_beams=1, do_sample=True, seed=s)[2] for s in (5, 5)]
    assert sampled[0] == sampled[1]


def test_florence_loader_refuses_other_models_and_loras_by_input(lm_paths, manager) -> None:
    ctx = make_ctx(lm_paths, manager)
    with pytest.raises(NodeError) as info:
        DownloadAndLoadFlorence2Model().execute(ctx, "tiny-llava", precision="fp32")
    assert info.value.input_name == "model" and "not Florence-2" in str(info.value)
    with pytest.raises(NodeError) as info:
        DownloadAndLoadFlorence2Model().execute(ctx, "tiny-florence-2", lora=object())
    assert info.value.input_name == "lora"
    with pytest.raises(NodeError) as info:
        DownloadAndLoadFlorence2Model().execute(ctx, "microsoft/Florence-2-large")
    assert info.value.input_name == "model" and "not found" in str(info.value)
    llava = VLMLoader().execute(ctx, "tiny-llava")[0]
    with pytest.raises(NodeError) as info:
        Florence2Run().execute(ctx, as_tensor(picture(1)), llava, task="caption", max_new_tokens=4)
    assert info.value.input_name == "florence2_model"
