"""Workflow files: UI→API conversion, reading JSON/PNG/WebP workflows, writing PNG metadata.

Pure Python (no torch).  The corpus tests compare our conversion of every ComfyUI example PNG's
``workflow`` chunk with the ``prompt`` chunk ComfyUI's own frontend produced from it.

The node definitions used for the corpus come from the ``corpus_node_defs`` fixture.  It runs
once with ``tests/data/workflows/core_node_defs.json`` and once with a fixture named
``runtime_object_info`` when one exists (the runtime's registry object_info, provided from a
``conftest.py``); without it that variant is skipped.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from graph_runtime.workflow_files import (
    ConversionResult, LoadedWorkflow, WorkflowFormatError, classify_json, convert_ui_to_api, convert_ui_workflow,
    load_workflow_file, png_text_chunks, read_image_texts)
from graph_runtime.workflow_files.node_defs import NodeDefCatalog
from tests.compat_corpus import CORPUS, needs_corpus

DATA = Path(__file__).parent / "data" / "workflows"
CORE_DEFS: dict[str, Any] = json.loads((DATA / "core_node_defs.json").read_text())


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module", params=["core_node_defs.json", "runtime_object_info"])
def corpus_node_defs(request) -> dict[str, Any]:
    """object_info used for the corpus: the JSON fixture, then the runtime's registry if provided."""
    if request.param == "core_node_defs.json":
        return CORE_DEFS
    try:
        return request.getfixturevalue("runtime_object_info")
    except pytest.FixtureLookupError:
        pytest.skip("no 'runtime_object_info' fixture; the runtime provides it from conftest.py")


def defs_with(**extra: dict) -> dict[str, Any]:
    """Core definitions plus test-only classes."""
    defs = dict(CORE_DEFS)
    defs.update(extra)
    return defs


def node_def(required: dict, output: list[str], optional: dict | None = None) -> dict:
    """A minimal V1 NodeDef for a test-only node class."""
    inputs: dict[str, Any] = {"required": required}
    order = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    return {"input": inputs, "input_order": order, "output": output, "output_name": output,
            "output_is_list": [False] * len(output), "name": "T", "display_name": "T", "description": "",
            "python_module": "tests", "category": "testing", "output_node": False}


def ui_node(node_id: int, node_type: str, *, inputs=(), outputs=(), widgets: Any = None, mode: int = 0,
            title: str | None = None, order: int | None = None) -> dict:
    """One UI-format node; ``inputs`` are (name, type, link[, widget_name]), ``outputs`` (name, type, [links])."""
    node = {"id": node_id, "type": node_type, "pos": [0, 0], "size": [100, 100], "flags": {},
            "order": node_id if order is None else order, "mode": mode,
            "inputs": [dict({"name": i[0], "type": i[1], "link": i[2]},
                            **({"widget": {"name": i[3]}} if len(i) > 3 else {})) for i in inputs],
            "outputs": [{"name": o[0], "type": o[1], "links": list(o[2])} for o in outputs],
            "properties": {}}
    if widgets is not None:
        node["widgets_values"] = widgets
    if title is not None:
        node["title"] = title
    return node


def ui_workflow(nodes: list[dict], links: list[list], **extra) -> dict:
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max((l[0] for l in links), default=0),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4, **extra}


def inputs_of(prompt: dict, node_id: str) -> dict:
    return prompt[node_id]["inputs"]


def sd15_nodes(ksampler_widgets: list | None = None) -> tuple[list[dict], list[list]]:
    """The classic text-to-image graph (ids as in ComfyUI's default SD1.5 workflow)."""
    nodes = [
        ui_node(4, "CheckpointLoaderSimple", widgets=["tiny.safetensors"],
                outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [3, 5]), ("VAE", "VAE", [8])]),
        ui_node(6, "CLIPTextEncode", title="Positive", widgets=["a cat"],
                inputs=[("clip", "CLIP", 3)], outputs=[("CONDITIONING", "CONDITIONING", [4])]),
        ui_node(7, "CLIPTextEncode", widgets=["blurry"],
                inputs=[("clip", "CLIP", 5)], outputs=[("CONDITIONING", "CONDITIONING", [6])]),
        ui_node(5, "EmptyLatentImage", widgets=[512, 512, 1], outputs=[("LATENT", "LATENT", [2])]),
        ui_node(3, "KSampler", widgets=ksampler_widgets or [42, "randomize", 20, 8, "euler", "normal", 1],
                inputs=[("model", "MODEL", 1), ("positive", "CONDITIONING", 4), ("negative", "CONDITIONING", 6),
                        ("latent_image", "LATENT", 2)], outputs=[("LATENT", "LATENT", [7])]),
        ui_node(8, "VAEDecode", inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)], outputs=[("IMAGE", "IMAGE", [9])]),
        ui_node(9, "SaveImage", widgets=["ComfyUI"], inputs=[("images", "IMAGE", 9)]),
        ui_node(12, "Note", widgets=["remember to set the seed"]),
    ]
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"], [4, 6, 0, 3, 1, "CONDITIONING"],
             [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"],
             [9, 8, 0, 9, 0, "IMAGE"]]
    return nodes, links


SD15_EXPECTED = {
    "4": {"inputs": {"ckpt_name": "tiny.safetensors"}, "class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"}},
    "6": {"inputs": {"text": "a cat", "clip": ["4", 1]}, "class_type": "CLIPTextEncode", "_meta": {"title": "Positive"}},
    "7": {"inputs": {"text": "blurry", "clip": ["4", 1]}, "class_type": "CLIPTextEncode",
          "_meta": {"title": "CLIP Text Encode (Prompt)"}},
    "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage",
          "_meta": {"title": "Empty Latent Image"}},
    "3": {"inputs": {"seed": 42, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
                     "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]},
          "class_type": "KSampler", "_meta": {"title": "KSampler"}},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode", "_meta": {"title": "VAE Decode"}},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage", "_meta": {"title": "Save Image"}},
}


# --------------------------------------------------------------------------- basic conversion
def test_basic_graph_converts_exactly_and_drops_notes():
    nodes, links = sd15_nodes()
    result = convert_ui_workflow(ui_workflow(nodes, links), CORE_DEFS)
    assert isinstance(result, ConversionResult)
    assert result.prompt == SD15_EXPECTED
    assert result.warnings == []
    assert convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS) == SD15_EXPECTED


def test_object_form_links_give_the_same_prompt():
    """Workflow schema 1.0 stores top-level links as objects."""
    nodes, links = sd15_nodes()
    objects = [{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3], "target_slot": l[4], "type": l[5]}
               for l in links]
    workflow = ui_workflow(nodes, [], version=1)
    workflow["links"] = objects
    assert convert_ui_to_api(workflow, CORE_DEFS) == SD15_EXPECTED


def test_target_slot_is_not_trusted_input_link_ids_are():
    """The frontend compresses widget input slots, leaving stale target_slot values."""
    nodes, links = sd15_nodes()
    for link in links:
        link[4] = 99
    assert convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS) == SD15_EXPECTED


def test_dict_form_widgets_values_map_by_name():
    nodes, links = sd15_nodes()
    ks = next(n for n in nodes if n["id"] == 3)
    ks["widgets_values"] = {"seed": 42, "control_after_generate": "fixed", "steps": 20, "cfg": 8,
                            "sampler_name": "euler", "scheduler": "normal", "denoise": 1}
    assert convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS) == SD15_EXPECTED


# --------------------------------------------------------------------------- widgets and seeds
@pytest.mark.parametrize("widgets", [
    [42, "randomize", 20, 8, "euler", "normal", 1],     # control value saved (all frontends until 2025)
    [42, "fixed", 20, 8, "euler", "normal", 1],
    [42, True, 20, 8, "euler", "normal", 1],            # the first frontends saved a boolean toggle
    [42, 20, 8, "euler", "normal", 1],                  # newest frontend keeps the control out of the list
    [42, None, 20, 8, "euler", "normal", 1],            # a hole where an unserialised widget was
], ids=["randomize", "fixed", "boolean", "no-control", "hole"])
def test_seed_control_value_is_skipped(widgets):
    nodes, links = sd15_nodes(widgets)
    assert inputs_of(convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS), "3") == SD15_EXPECTED["3"]["inputs"]


def test_noise_seed_controls_in_advanced_and_custom_samplers():
    nodes = [
        ui_node(1, "KSamplerAdvanced", widgets=["enable", 7, "increment", 30, 6.5, "dpmpp_2m", "karras", 0, 25, "disable"]),
        ui_node(2, "RandomNoise", widgets=[99, "randomize"]),
        ui_node(3, "SamplerCustom", widgets=[False, 5, "decrement", 4.5]),
    ]
    prompt = convert_ui_to_api(ui_workflow(nodes, []), CORE_DEFS)
    assert inputs_of(prompt, "1") == {"add_noise": "enable", "noise_seed": 7, "steps": 30, "cfg": 6.5,
                                      "sampler_name": "dpmpp_2m", "scheduler": "karras", "start_at_step": 0,
                                      "end_at_step": 25, "return_with_leftover_noise": "disable"}
    assert inputs_of(prompt, "2") == {"noise_seed": 99}
    assert inputs_of(prompt, "3") == {"add_noise": False, "noise_seed": 5, "cfg": 4.5}


def test_control_after_generate_option_rules():
    """Explicit option on INT and COMBO (with its filter list); seed-named INT opted out with False."""
    defs = defs_with(
        TControls=node_def({
            "count": ["INT", {"default": 1, "control_after_generate": True}],
            "style": [["a", "b", "c"], {"control_after_generate": True}],
            "seed": ["INT", {"default": 0, "control_after_generate": False}],
            "label": ["STRING", {}],
        }, ["INT"]))
    node = ui_node(1, "TControls", widgets=[3, "increment", "b", "randomize", "", 11, "x"])
    assert inputs_of(convert_ui_to_api(ui_workflow([node], []), defs), "1") == {
        "count": 3, "style": "b", "seed": 11, "label": "x"}


def test_load_image_upload_widget_is_skipped():
    nodes = [ui_node(1, "LoadImage", widgets=["cat.png", "image"], outputs=[("IMAGE", "IMAGE", []), ("MASK", "MASK", [])]),
             ui_node(2, "LoadImageMask", widgets=["dog.png", "red", "image"])]
    prompt = convert_ui_to_api(ui_workflow(nodes, []), CORE_DEFS)
    assert inputs_of(prompt, "1") == {"image": "cat.png"}
    assert inputs_of(prompt, "2") == {"image": "dog.png", "channel": "red"}


def test_missing_values_required_get_defaults_optional_stay_unset():
    nodes = [ui_node(1, "VAEEncodeForInpaint"), ui_node(2, "DualCLIPLoader", widgets=["a.safetensors", "b.safetensors", "flux"])]
    result = convert_ui_workflow(ui_workflow(nodes, []), CORE_DEFS)
    assert inputs_of(result.prompt, "1") == {"grow_mask_by": 6}
    assert inputs_of(result.prompt, "2") == {"clip_name1": "a.safetensors", "clip_name2": "b.safetensors", "type": "flux"}
    assert len(result.warnings) == 1 and "grow_mask_by" in result.warnings[0]


def test_list_widget_values_are_boxed():
    defs = defs_with(TList=node_def({"values": ["STRING", {}]}, ["STRING"]))
    node = ui_node(1, "TList", widgets=[["a", "b"]])
    assert inputs_of(convert_ui_to_api(ui_workflow([node], []), defs), "1") == {"values": {"__value__": ["a", "b"]}}


# --------------------------------------------------------------------------- converted widgets, primitives
def test_converted_widget_linked_to_a_node_takes_the_link():
    defs = defs_with(TIntSource=node_def({"value": ["INT", {"default": 0}]}, ["INT"]))
    nodes, links = sd15_nodes()
    nodes.append(ui_node(20, "TIntSource", widgets=[1234], outputs=[("INT", "INT", [30])]))
    latent = next(n for n in nodes if n["id"] == 5)
    latent["inputs"] = [{"name": "width", "type": "INT", "link": 30, "widget": {"name": "width"}}]
    links.append([30, 20, 0, 5, 0, "INT"])
    prompt = convert_ui_to_api(ui_workflow(nodes, links), defs)
    assert inputs_of(prompt, "5") == {"width": ["20", 0], "height": 512, "batch_size": 1}
    assert inputs_of(prompt, "20") == {"value": 1234}


def test_primitive_node_value_is_written_into_every_target():
    nodes, links = sd15_nodes([1, "fixed", 20, 8, "euler", "normal", 1])
    nodes.append(ui_node(40, "PrimitiveNode", title="size", widgets=[768, "fixed"],
                         outputs=[("INT", "INT", [40, 41])]))
    nodes.append(ui_node(41, "PrimitiveNode", title="seed", widgets=[5555, "randomize"], outputs=[("INT", "INT", [42])]))
    latent = next(n for n in nodes if n["id"] == 5)
    latent["inputs"] = [{"name": "width", "type": "INT", "link": 40, "widget": {"name": "width"}},
                        {"name": "height", "type": "INT", "link": 41, "widget": {"name": "height"}}]
    ks = next(n for n in nodes if n["id"] == 3)
    ks["inputs"].append({"name": "seed", "type": "INT", "link": 42, "widget": {"name": "seed"}})
    links += [[40, 40, 0, 5, 0, "INT"], [41, 40, 0, 5, 1, "INT"], [42, 41, 0, 3, 4, "INT"]]
    prompt = convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS)
    assert "40" not in prompt and "41" not in prompt
    assert inputs_of(prompt, "5") == {"width": 768, "height": 768, "batch_size": 1}
    assert inputs_of(prompt, "3")["seed"] == 5555


# --------------------------------------------------------------------------- reroutes, bypass, mute
def test_reroute_chain_is_followed():
    nodes, links = sd15_nodes()
    nodes += [ui_node(50, "Reroute", inputs=[("", "*", 50)], outputs=[("", "MODEL", [51])]),
              ui_node(51, "Reroute", inputs=[("", "*", 51)], outputs=[("", "MODEL", [52])])]
    ks = next(n for n in nodes if n["id"] == 3)
    ks["inputs"][0]["link"] = 52
    links = [l for l in links if l[0] != 1] + [[50, 4, 0, 50, 0, "MODEL"], [51, 50, 0, 51, 0, "MODEL"],
                                                [52, 51, 0, 3, 0, "MODEL"]]
    assert convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS) == SD15_EXPECTED


def test_dangling_reroute_leaves_input_unset():
    nodes, links = sd15_nodes()
    nodes.append(ui_node(50, "Reroute", inputs=[("", "*", None)], outputs=[("", "MODEL", [52])]))
    next(n for n in nodes if n["id"] == 3)["inputs"][0]["link"] = 52
    links = [l for l in links if l[0] != 1] + [[52, 50, 0, 3, 0, "MODEL"]]
    assert "model" not in inputs_of(convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS), "3")


def _with_lora(mode: int) -> dict:
    """SD1.5 graph with a LoraLoader (node 10) between the checkpoint and its consumers."""
    nodes, links = sd15_nodes()
    nodes.append(ui_node(10, "LoraLoader", mode=mode, widgets=["style.safetensors", 0.8, 0.6],
                         inputs=[("model", "MODEL", 60), ("clip", "CLIP", 61)],
                         outputs=[("MODEL", "MODEL", [62]), ("CLIP", "CLIP", [63, 64])]))
    byid = {n["id"]: n for n in nodes}
    byid[3]["inputs"][0]["link"] = 62
    byid[6]["inputs"][0]["link"] = 63
    byid[7]["inputs"][0]["link"] = 64
    links = [l for l in links if l[0] not in (1, 3, 5)] + [
        [60, 4, 0, 10, 0, "MODEL"], [61, 4, 1, 10, 1, "CLIP"], [62, 10, 0, 3, 0, "MODEL"],
        [63, 10, 1, 6, 0, "CLIP"], [64, 10, 1, 7, 0, "CLIP"]]
    return ui_workflow(nodes, links)


def test_active_lora_is_wired_in():
    prompt = convert_ui_to_api(_with_lora(0), CORE_DEFS)
    assert inputs_of(prompt, "10") == {"lora_name": "style.safetensors", "strength_model": 0.8, "strength_clip": 0.6,
                                       "model": ["4", 0], "clip": ["4", 1]}
    assert inputs_of(prompt, "3")["model"] == ["10", 0]
    assert inputs_of(prompt, "6")["clip"] == ["10", 1]


def test_bypassed_node_passes_matching_input_through():
    prompt = convert_ui_to_api(_with_lora(4), CORE_DEFS)
    assert prompt == SD15_EXPECTED


def test_bypassed_node_without_matching_input_drops_the_consumer_input():
    nodes, links = sd15_nodes()
    next(n for n in nodes if n["id"] == 8)["mode"] = 4   # VAEDecode has LATENT/VAE inputs, SaveImage wants IMAGE
    prompt = convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS)
    assert "8" not in prompt
    assert inputs_of(prompt, "9") == {"filename_prefix": "ComfyUI"}


def test_bypassed_node_prefers_same_slot_then_first_exact_type():
    defs = defs_with(TPair=node_def({"a": ["IMAGE"], "b": ["IMAGE"]}, ["IMAGE", "IMAGE"]),
                     TImg=node_def({}, ["IMAGE"]))
    nodes = [ui_node(1, "TImg", outputs=[("IMAGE", "IMAGE", [1])]), ui_node(2, "TImg", outputs=[("IMAGE", "IMAGE", [2])]),
             ui_node(3, "TPair", mode=4, inputs=[("a", "IMAGE", 1), ("b", "IMAGE", 2)],
                     outputs=[("IMAGE", "IMAGE", [3]), ("IMAGE", "IMAGE", [4])]),
             ui_node(4, "SaveImage", widgets=["x"], inputs=[("images", "IMAGE", 3)]),
             ui_node(5, "SaveImage", widgets=["y"], inputs=[("images", "IMAGE", 4)])]
    links = [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"], [4, 3, 1, 5, 0, "IMAGE"]]
    prompt = convert_ui_to_api(ui_workflow(nodes, links), defs)
    assert inputs_of(prompt, "4")["images"] == ["1", 0]
    assert inputs_of(prompt, "5")["images"] == ["2", 0]


def test_muted_node_is_removed_and_consumers_lose_the_input():
    prompt = convert_ui_to_api(_with_lora(2), CORE_DEFS)
    assert "10" not in prompt
    assert "model" not in inputs_of(prompt, "3")
    assert "clip" not in inputs_of(prompt, "6") and "clip" not in inputs_of(prompt, "7")
    assert inputs_of(prompt, "3")["positive"] == ["6", 0]


def test_muted_output_node_is_not_emitted():
    nodes, links = sd15_nodes()
    next(n for n in nodes if n["id"] == 9)["mode"] = 2
    prompt = convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS)
    assert set(prompt) == set(SD15_EXPECTED) - {"9"}


# --------------------------------------------------------------------------- subgraphs
def _load_nested() -> tuple[dict, dict]:
    return (json.loads((DATA / "nested_subgraphs.ui.json").read_text()),
            json.loads((DATA / "nested_subgraphs.api.json").read_text()))


def test_nested_subgraphs_flatten_with_path_ids():
    workflow, expected = _load_nested()
    result = convert_ui_workflow(workflow, CORE_DEFS)
    assert result.prompt == expected
    assert result.warnings == []


def test_subgraph_widget_falls_back_to_inner_value_without_instance_value():
    """No promoted value on the outer instance: the innermost node keeps its own seed (frontend rule)."""
    workflow, expected = _load_nested()
    outer = next(n for n in workflow["nodes"] if n["id"] == 20)
    outer["widgets_values"] = []
    assert inputs_of(convert_ui_to_api(workflow, CORE_DEFS), "20:5:3")["seed"] == 1


def test_subgraph_input_linked_outside_wins_over_promoted_value():
    workflow, expected = _load_nested()
    workflow["nodes"].append(ui_node(60, "PrimitiveNode", widgets=[777, "fixed"], outputs=[("INT", "INT", [60])]))
    outer = next(n for n in workflow["nodes"] if n["id"] == 20)
    outer["inputs"].append({"name": "seed", "type": "INT", "link": 60, "widget": {"name": "seed"}})
    workflow["links"].append([60, 60, 0, 20, 4, "INT"])
    assert inputs_of(convert_ui_to_api(workflow, CORE_DEFS), "20:5:3")["seed"] == 777


def test_legacy_instance_values_with_control_slot():
    workflow, expected = _load_nested()
    next(n for n in workflow["nodes"] if n["id"] == 20)["widgets_values"] = [31337, "randomize"]
    assert inputs_of(convert_ui_to_api(workflow, CORE_DEFS), "20:5:3")["seed"] == 31337


def test_muted_subgraph_instance_drops_its_inner_nodes():
    workflow, _ = _load_nested()
    next(n for n in workflow["nodes"] if n["id"] == 20)["mode"] = 2
    prompt = convert_ui_to_api(workflow, CORE_DEFS)
    assert not any(k.startswith("20:") for k in prompt)
    assert inputs_of(prompt, "30") == {"filename_prefix": "ComfyUI"}


def test_bypass_inside_a_subgraph():
    workflow, _ = _load_nested()
    encode = workflow["definitions"]["subgraphs"][0]
    # A bypassed ConditioningZeroOut between the encoder and the subgraph output.
    encode["nodes"].append(ui_node(2, "ConditioningZeroOut", mode=4, inputs=[("conditioning", "CONDITIONING", 104)],
                                   outputs=[("CONDITIONING", "CONDITIONING", [105])]))
    encode["nodes"][0]["outputs"][0]["links"] = [104]
    encode["links"] = [l for l in encode["links"] if l["id"] != 103] + [
        {"id": 104, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "CONDITIONING"},
        {"id": 105, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING"}]
    encode["outputs"][0]["linkIds"] = [105]
    prompt = convert_ui_to_api(workflow, CORE_DEFS)
    assert "10:2" not in prompt
    assert inputs_of(prompt, "20:5:3")["positive"] == ["10:1", 0]
    encode["nodes"][-1]["mode"] = 0
    prompt = convert_ui_to_api(workflow, CORE_DEFS)
    assert inputs_of(prompt, "20:5:3")["positive"] == ["10:2", 0]
    assert inputs_of(prompt, "10:2") == {"conditioning": ["10:1", 0]}


def test_subgraph_definitions_nested_inside_definitions_are_found():
    workflow, expected = _load_nested()
    encode, inner, outer = workflow["definitions"]["subgraphs"]
    workflow["definitions"]["subgraphs"] = [encode, outer]
    outer["definitions"] = {"subgraphs": [inner]}
    assert convert_ui_to_api(workflow, CORE_DEFS) == expected


def test_official_z_image_turbo_template():
    """The frontend's Z-Image-Turbo template: one subgraph instance (57) feeding SaveImage (9).

    comfyui-frontend.md §5 records what the real frontend sent for it: inner ids ``57:3``
    (KSampler), ``57:8`` ..., links such as ``["57:8", 0]``.
    """
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    path = Path(templates.__file__).parent / "templates" / "image_z_image_turbo.json"
    if not path.is_file():
        pytest.skip("template not shipped in this package version")
    loaded = load_workflow_file(path)
    result = convert_ui_workflow(loaded.ui_workflow, CORE_DEFS)
    assert result.warnings == []
    prompt = result.prompt
    assert {k: v["class_type"] for k, v in prompt.items()} == {
        "57:3": "KSampler", "57:8": "VAEDecode", "57:11": "ModelSamplingAuraFlow", "57:13": "EmptySD3LatentImage",
        "57:27": "CLIPTextEncode", "57:28": "UNETLoader", "57:29": "VAELoader", "57:30": "CLIPLoader",
        "57:33": "ConditioningZeroOut", "9": "SaveImage"}
    assert inputs_of(prompt, "9")["images"] == ["57:8", 0]
    sampler = inputs_of(prompt, "57:3")
    assert (sampler["model"], sampler["positive"], sampler["negative"], sampler["latent_image"]) == (
        ["57:11", 0], ["57:27", 0], ["57:33", 0], ["57:13", 0])
    assert "control_after_generate" not in sampler and isinstance(sampler["seed"], int)


def test_subgraph_that_contains_itself_is_rejected():
    workflow, _ = _load_nested()
    inner = workflow["definitions"]["subgraphs"][1]
    inner["nodes"].append(ui_node(9, inner["id"]))
    with pytest.raises(WorkflowFormatError, match="itself"):
        convert_ui_to_api(workflow, CORE_DEFS)


# --------------------------------------------------------------------------- unknown types, errors
def test_unknown_class_keeps_links_and_reports_a_warning():
    nodes, links = sd15_nodes()
    nodes.append(ui_node(70, "FancyUpscaler", widgets=[2.0, "lanczos"], inputs=[("image", "IMAGE", 70)]))
    links.append([70, 8, 0, 70, 0, "IMAGE"])
    result = convert_ui_workflow(ui_workflow(nodes, links), CORE_DEFS)
    assert result.prompt["70"] == {"inputs": {"image": ["8", 0]}, "class_type": "FancyUpscaler",
                                   "_meta": {"title": "FancyUpscaler"}}
    assert any("FancyUpscaler" in w for w in result.warnings)


def test_legacy_group_nodes_are_named_in_the_warning():
    node = ui_node(1, "workflow>My group", widgets=[1, 2])
    result = convert_ui_workflow(ui_workflow([node], [], extra={"groupNodes": {"My group": {}}}), CORE_DEFS)
    assert result.prompt["1"]["class_type"] == "workflow>My group"
    assert any("legacy group node" in w for w in result.warnings)


@pytest.mark.parametrize("workflow, message", [
    ({"links": []}, "no 'nodes'"),
    ({"nodes": {}}, "'nodes' must be a list"),
    ({"nodes": [{"type": "KSampler"}]}, "no 'id'"),
    ({"nodes": [{"id": 1, "type": "SaveImage"}, {"id": 1, "type": "SaveImage"}]}, "duplicate node id"),
    ({"nodes": [], "links": [[1, 2, 0]]}, "at least 5"),
    ({"nodes": [], "links": [{"id": 1, "origin_id": 2}]}, "lacks"),
    ({"3": {"class_type": "KSampler", "inputs": {}}}, "already an API-format prompt"),
    ([], "JSON object"),
])
def test_malformed_workflows_raise(workflow, message):
    with pytest.raises(WorkflowFormatError, match=message):
        convert_ui_to_api(workflow, CORE_DEFS)


def test_link_from_unknown_node_raises():
    nodes, links = sd15_nodes()
    links[0][1] = 999
    with pytest.raises(WorkflowFormatError, match="999"):
        convert_ui_to_api(ui_workflow(nodes, links), CORE_DEFS)


def test_reference_to_missing_link_is_a_warning():
    nodes, links = sd15_nodes()
    links = [l for l in links if l[0] != 9]
    result = convert_ui_workflow(ui_workflow(nodes, links), CORE_DEFS)
    assert "images" not in inputs_of(result.prompt, "9")
    assert any("link 9" in w for w in result.warnings)


# --------------------------------------------------------------------------- corpus
def _corpus_pngs() -> list[Path]:
    return sorted(CORPUS.glob("*.png")) if CORPUS.is_dir() else []


def _readme_kinds() -> dict[str, str]:
    readme = CORPUS / "README.md"
    if not readme.is_file():
        return {}
    rows = re.findall(r"^\| `([^`]+\.png)` \| ([^|]+?) \|", readme.read_text(), flags=re.M)
    return {name: kind.strip() for name, kind in rows}


CORPUS_PNGS = _corpus_pngs()


def _both_chunks(path: Path) -> bool:
    return {"prompt", "workflow"} <= set(read_image_texts(path)[1])


WORKFLOW_PNGS = [p for p in CORPUS_PNGS if _both_chunks(p)]


def assert_matches_embedded(converted: dict, embedded: dict, node_defs: dict) -> None:
    """Same nodes, class types, links and values as ComfyUI's own conversion.

    Ignored: ``_meta``; inputs the embedded prompt has but the node definition does not declare
    (old frontends sent their upload widget); and widget inputs we filled with the definition's
    default because the workflow predates them.
    """
    catalog = NodeDefCatalog(node_defs)
    assert set(converted) == set(embedded)
    for node_id, node in embedded.items():
        ours = converted[node_id]
        assert ours["class_type"] == node["class_type"], node_id
        view = catalog.get(node["class_type"])
        assert view is not None, f"no definition for {node['class_type']}"
        expected = {k: v for k, v in node["inputs"].items() if view.input(k) is not None}
        for name, value in ours["inputs"].items():
            if name in expected:
                assert value == expected[name], f"node {node_id} input {name}: {value!r} != {expected[name]!r}"
            else:
                spec = view.input(name)
                assert spec is not None and spec.is_widget and value == spec.default_value(), \
                    f"node {node_id}: unexpected input {name}={value!r}"
        assert set(expected) <= set(ours["inputs"]), f"node {node_id} lacks {set(expected) - set(ours['inputs'])}"


@needs_corpus
def test_corpus_has_workflows_and_defs_cover_them():
    assert len(WORKFLOW_PNGS) >= 20
    used = set()
    for path in WORKFLOW_PNGS:
        used |= {n["class_type"] for n in load_workflow_file(path).api_prompt.values()}
    assert used <= set(CORE_DEFS), f"core_node_defs.json lacks {sorted(used - set(CORE_DEFS))}"


@needs_corpus
@pytest.mark.parametrize("path", WORKFLOW_PNGS, ids=lambda p: p.stem)
def test_corpus_workflow_converts_like_comfyui(path, corpus_node_defs):
    loaded = load_workflow_file(path)
    result = convert_ui_workflow(loaded.ui_workflow, corpus_node_defs)
    assert_matches_embedded(result.prompt, loaded.api_prompt, corpus_node_defs)
    assert all("unknown node type" not in w for w in result.warnings)


@needs_corpus
@pytest.mark.parametrize("path", CORPUS_PNGS, ids=lambda p: p.stem)
def test_corpus_png_reading(path):
    kind = _readme_kinds().get(path.name)
    if path in WORKFLOW_PNGS:
        loaded = load_workflow_file(path)
        assert loaded.source == "png" and loaded.path == path
        assert isinstance(loaded.api_prompt, dict) and loaded.api_prompt
        assert isinstance(loaded.ui_workflow, dict) and isinstance(loaded.ui_workflow["nodes"], list)
        assert kind in (None, "workflow")
        assert loaded.to_api_prompt({}) == loaded.api_prompt
    else:
        assert kind in (None, "input image")
        with pytest.raises(WorkflowFormatError, match="no ComfyUI workflow"):
            load_workflow_file(path)


# --------------------------------------------------------------------------- writing and reading files
def test_png_text_chunks_match_comfyui_saveimage(tmp_path):
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "text": "café"}}}
    workflow = {"nodes": [], "links": []}
    info = png_text_chunks(prompt, workflow, {"workflow": {"ignored": True}, "author": "me"})
    assert [(c[0], c[1]) for c in info.chunks] == [
        (b"tEXt", b"prompt\x00" + json.dumps(prompt).encode("latin-1")),
        (b"tEXt", b"workflow\x00" + json.dumps(workflow).encode("latin-1")),
        (b"tEXt", b"author\x00" + json.dumps("me").encode("latin-1"))]
    path = tmp_path / "out.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    loaded = load_workflow_file(path)
    assert loaded.api_prompt == prompt and loaded.ui_workflow == workflow and loaded.extra == {}
    assert read_image_texts(path)[1]["author"] == '"me"'


def test_png_without_prompt_only_workflow_and_compressed_chunks(tmp_path):
    nodes, links = sd15_nodes()
    workflow = ui_workflow(nodes, links)
    info = PngInfo()
    info.add_text("workflow", json.dumps(workflow), zip=True)            # zTXt
    info.add_itxt("prompt", json.dumps(SD15_EXPECTED), zip=True)         # compressed iTXt
    path = tmp_path / "z.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    loaded = load_workflow_file(path)
    assert loaded.ui_workflow == workflow and loaded.api_prompt == SD15_EXPECTED
    only = PngInfo()
    only.add_text("workflow", json.dumps(workflow))
    Image.new("RGB", (4, 4)).save(path, pnginfo=only)
    loaded = load_workflow_file(path)
    assert loaded.api_prompt is None
    assert loaded.to_api_prompt(CORE_DEFS) == SD15_EXPECTED


def test_png_with_invalid_json_chunk(tmp_path):
    info = PngInfo()
    info.add_text("prompt", "{not json")
    path = tmp_path / "bad.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    with pytest.raises(WorkflowFormatError, match="not valid JSON"):
        load_workflow_file(path)


def test_webp_exif_metadata(tmp_path):
    nodes, links = sd15_nodes()
    workflow = ui_workflow(nodes, links)
    image = Image.new("RGB", (4, 4))
    exif = image.getexif()
    exif[0x0110] = "prompt:" + json.dumps(SD15_EXPECTED)
    exif[0x010F] = "workflow:" + json.dumps(workflow)
    path = tmp_path / "anim.webp"
    image.save(path, exif=exif)
    loaded = load_workflow_file(path)
    assert loaded.source == "webp"
    assert loaded.api_prompt == SD15_EXPECTED and loaded.ui_workflow == workflow


def test_json_files_of_every_shape(tmp_path):
    nodes, links = sd15_nodes()
    workflow = ui_workflow(nodes, links)
    cases = {
        "ui.json": (workflow, None, workflow),
        "api.json": (SD15_EXPECTED, SD15_EXPECTED, None),
        "request.json": ({"prompt": SD15_EXPECTED, "client_id": "x",
                          "extra_data": {"extra_pnginfo": {"workflow": workflow}}}, SD15_EXPECTED, workflow),
        "history.json": ([3, "abc", SD15_EXPECTED, {"extra_pnginfo": {"workflow": workflow}}, ["9"]],
                         SD15_EXPECTED, workflow),
        "wrapped.json": ({"workflow": workflow}, None, workflow),
    }
    for name, (content, api, ui) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(content), encoding="utf-8")
        loaded = load_workflow_file(path)
        assert (loaded.api_prompt, loaded.ui_workflow, loaded.source) == (api, ui, "json"), name
        assert loaded.to_api_prompt(CORE_DEFS) == SD15_EXPECTED
    loaded = load_workflow_file(tmp_path / "request.json")
    assert loaded.to_api_prompt(CORE_DEFS, prefer_embedded=False) == SD15_EXPECTED


@pytest.mark.parametrize("content, message", [
    ("{oops", "invalid JSON"),
    ('{"hello": "world"}', "not a ComfyUI workflow"),
    ("plain text", "not a readable image"),
])
def test_unusable_files_raise(tmp_path, content, message):
    path = tmp_path / "f.json"
    path.write_text(content)
    with pytest.raises(WorkflowFormatError, match=message):
        load_workflow_file(path)


def test_classify_json_rejects_non_workflows():
    with pytest.raises(WorkflowFormatError):
        classify_json({"3": {"inputs": {}}})   # no node carries class_type
    assert isinstance(classify_json({"3": {"class_type": "X", "inputs": {}}}), LoadedWorkflow)


def test_conversion_does_not_mutate_its_input():
    workflow, _ = _load_nested()
    before = copy.deepcopy(workflow)
    convert_ui_to_api(workflow, CORE_DEFS)
    assert workflow == before
