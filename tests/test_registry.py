"""Registry and object_info: declarations in, ComfyUI's NodeDef shape out; custom node packs."""
from __future__ import annotations

import textwrap

from graph_runtime.executor import Executor
from graph_runtime.node_info import object_info
from graph_runtime.registry import build_registry
from graph_runtime.validation import PromptValidator

V1_PACK = '''
class Doubler:
    CATEGORY = "third party"
    FUNCTION = "double"
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("twice",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 2, "min": 0, "max": 100})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def double(self, value, unique_id=None):
        return (value * 2,)


class Show:
    CATEGORY = "third party"
    FUNCTION = "show"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "mode": (["a", "b"], {"default": "b"})}}

    def show(self, value, mode):
        return {"ui": {"text": [f"{mode}:{value}"]}}


NODE_CLASS_MAPPINGS = {"Doubler": Doubler, "Show": Show, "SaveImage": Show}
NODE_DISPLAY_NAME_MAPPINGS = {"Doubler": "Double It"}
'''


def test_object_info_is_derived_from_the_declaration(base_dir):
    registry = build_registry(packs=["nodes.image", "nodes.primitives"])
    info = object_info(registry, base_dir)
    save = info["SaveImage"]
    assert save["input"]["required"]["filename_prefix"][0] == "STRING"
    assert save["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert save["input_order"] == {"required": ["images", "filename_prefix"], "hidden": ["prompt", "extra_pnginfo"]}
    assert save["output_node"] is True and save["output"] == [] and save["category"] == "image"
    for name, node in info.items():  # the frontend rejects definitions without these
        for key in ("name", "display_name", "description", "category", "output_node", "python_module"):
            assert key in node, (name, key)
    scale = info["ImageScale"]["input"]["required"]
    assert scale["upscale_method"][0] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert scale["width"] == ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}]


def test_file_list_combos_show_the_files_present_now(base_dir):
    registry = build_registry(packs=["nodes.image"])
    assert object_info(registry, base_dir)["LoadImage"]["input"]["required"]["image"][0] == []
    (base_dir.input_dir / "cat.png").write_bytes(b"x")
    image_input = object_info(registry, base_dir)["LoadImage"]["input"]["required"]["image"]
    assert image_input == [["cat.png"], {"image_upload": True}]


def test_v1_custom_nodes_load_and_run_and_broken_packs_are_skipped(base_dir, tmp_path, caplog):
    custom = base_dir.custom_nodes_dirs[0]
    custom.mkdir(parents=True, exist_ok=True)
    (custom / "good_pack.py").write_text(V1_PACK)
    (custom / "broken_pack.py").write_text("raise RuntimeError('this pack is broken')\n")
    (custom / "disabled_pack.py.disabled").write_text("raise SystemExit\n")
    registry = build_registry(packs=["nodes.image"], custom_dirs=base_dir.custom_nodes_dirs)
    assert [f.name for f in registry.failures] == ["custom_nodes.broken_pack"]
    assert "this pack is broken" in registry.failures[0].traceback
    assert registry.get("SaveImage").python_module == "nodes.image"  # built-ins cannot be overridden
    info = object_info(registry, base_dir)
    assert info["Doubler"]["display_name"] == "Double It"
    assert info["Doubler"]["output_name"] == ["twice"]
    assert info["Doubler"]["python_module"] == "custom_nodes.good_pack"
    assert info["Show"]["input"]["required"]["mode"] == [["a", "b"], {"default": "b"}]
    prompt = {"1": {"class_type": "Doubler", "inputs": {"value": 21}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0], "mode": "a"}}}
    result = PromptValidator(registry, base_dir).validate(prompt)
    assert result.ok, result.summary()
    report = Executor(registry, base_dir).execute("p", result.prompt, result.outputs)
    assert report.ok and report.outputs == {"2": {"text": ["a:42"]}}


def test_extra_model_paths_yaml(base_dir, tmp_path):
    a1111 = tmp_path / "a1111"
    (a1111 / "models" / "Stable-diffusion").mkdir(parents=True)
    (a1111 / "models" / "Stable-diffusion" / "sub").mkdir()
    (a1111 / "models" / "Stable-diffusion" / "sub" / "real.safetensors").write_bytes(b"x")
    (a1111 / "models" / "Lora").mkdir(parents=True)
    (a1111 / "models" / "Lora" / "style.safetensors").write_bytes(b"x")
    (a1111 / "models" / "Lora" / "notes.txt").write_text("not a model")
    yaml_file = tmp_path / "extra_model_paths.yaml"
    yaml_file.write_text(textwrap.dedent(f"""
        a111:
            base_path: {a1111}
            checkpoints: models/Stable-diffusion
            loras: |
                models/Lora
                models/LyCORIS
            controlnet: models/ControlNet
        """))
    base_dir.load_extra_model_paths(yaml_file)
    assert base_dir.list_models("checkpoints") == ["sub/real.safetensors"]
    assert base_dir.list_models("loras") == ["style.safetensors"]
    assert base_dir.model_path("checkpoints", "sub/real.safetensors") == \
        a1111 / "models" / "Stable-diffusion" / "sub" / "real.safetensors"
    assert base_dir.model_path("checkpoints", "../../etc/passwd") is None
    assert base_dir.list_models("clip") == base_dir.list_models("text_encoders")


def test_symlinked_models_from_a_shared_drive_are_found(base_dir, tmp_path):
    drive = tmp_path / "drive"
    drive.mkdir()
    (drive / "big.safetensors").write_bytes(b"x")
    link = base_dir.models_dir / "checkpoints" / "big.safetensors"
    link.symlink_to(drive / "big.safetensors")
    assert base_dir.list_models("checkpoints") == ["big.safetensors"]
    assert base_dir.model_path("checkpoints", "big.safetensors") == link
    assert base_dir.model_path("checkpoints", "../../../drive/big.safetensors") is None
