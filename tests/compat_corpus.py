"""Test helper: run ComfyUI's example PNGs on the tiny models.

The PNG is run as shared (``server.py run FILE.png``); only ``--set`` overrides change it, the way
a user adapts a downloaded workflow to the files they have: model names are mapped to the tiny
models, LoadImage names to the example input pictures, and sizes/steps are scaled down so a
CPU run takes seconds.  The runtime itself never special-cases any of these names.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

SHARED = Path(os.environ.get("GENESIS_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
CORPUS = SHARED / "compat" / "comfyui-examples"
REQUIRE_ENV = "GENESIS_REQUIRE_CORPUS"
WHERE = (f"the ComfyUI example corpus is not at {CORPUS}: it comes from the project's shared folder "
         "(shared/compat/comfyui-examples beside the repository, or GENESIS_SHARED_DIR=<shared>); "
         f"{REQUIRE_ENV}=1 (set by .ci/run) turns this skip into a failure")


def corpus_available() -> bool:
    return CORPUS.is_dir() and any(CORPUS.glob("*.png"))


def corpus_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


needs_corpus = pytest.mark.skipif(not corpus_available() and not corpus_required(), reason=WHERE)
"""Skips a test on a fresh clone without ``shared/`` (saying where the corpus comes from); with
``GENESIS_REQUIRE_CORPUS=1`` the test runs and fails instead."""
MAX_SIDE = 64
STEPS = 2

# example input pictures by the name the workflows load them under
INPUT_PICTURES = {
    "input_scribble_example.png": "controlnet_input_scribble_example.png",
    "pose_worship.png": "controlnet_pose_worship.png",
    "shark_depthmap.png": "controlnet_shark_depthmap.png",
    "yosemite_inpaint_example.png": "inpaint_yosemite_inpaint_example.png",
    "yosemite_outpaint_example.png": "inpaint_yosemite_inpaint_example.png",
}
FALLBACK_PICTURE = "inpaint_yosemite_inpaint_example.png"

SIZE_INPUTS = {"width", "height", "x", "y", "left", "top", "right", "bottom"}


def corpus_workflows() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.glob("*.png") if "prompt" in Image.open(p).text)


def embedded_prompt(png: Path) -> dict[str, Any]:
    return json.loads(Image.open(png).text["prompt"])


def node_types(png: Path) -> set[str]:
    return {n["class_type"] for n in embedded_prompt(png).values()}


def _family(prompt: dict[str, Any]) -> str:
    names = " ".join(str(v) for n in prompt.values() for k, v in n["inputs"].items()
                     if k in ("ckpt_name", "unet_name")).lower()
    if "flux" in names:
        return "flux"
    if "xl" in names:
        return "sdxl"
    return "sd15"


def model_name_for(class_type: str, input_name: str, value: str, family: str) -> str | None:
    low = value.lower()
    if input_name == "ckpt_name":
        if "flux1-schnell" in low:
            return "tiny-flux-schnell.safetensors"
        if "flux" in low:
            return "tiny-flux-dev.safetensors"
        return "tiny-sdxl.safetensors" if "xl" in low else "tiny-sd15.safetensors"
    if input_name == "unet_name":
        return "tiny-flux-canny-dev.safetensors" if "canny" in low else "tiny-flux-dev.safetensors"
    if input_name in ("clip_name", "clip_name1", "clip_name2"):
        if "t5" in low:
            return "tiny-t5xxl.safetensors"
        return "tiny-clip-g.safetensors" if "clip_g" in low else "tiny-clip-l.safetensors"
    if input_name == "vae_name":
        return "tiny-flux-ae.safetensors" if family == "flux" else "tiny-sd-vae.safetensors"
    if input_name == "lora_name":
        return "tiny-sdxl-lora.safetensors" if family == "sdxl" else "tiny-sd15-lora.safetensors"
    if input_name == "control_net_name":
        return {"flux": "tiny-flux-controlnet.safetensors", "sdxl": "tiny-sdxl-controlnet.safetensors"}.get(
            family, "tiny-sd15-controlnet.safetensors")
    if input_name == "model_name" and class_type == "UpscaleModelLoader":
        return "tiny-esrgan-x4.safetensors"
    return None


def tiny_overrides(png: Path, input_dir: Path) -> list[str]:
    """``--set`` arguments that make an example run on the tiny models in seconds."""
    prompt = embedded_prompt(png)
    family = _family(prompt)
    sizes = [v for n in prompt.values() for k, v in n["inputs"].items()
             if k in ("width", "height") and isinstance(v, (int, float)) and v > 0]
    scale = MAX_SIDE / max(sizes) if sizes else 1.0
    # areas have a minimum of 64 pixels: keep the smallest area at that size
    areas = [v for n in prompt.values() if n["class_type"] == "ConditioningSetArea"
             for k, v in n["inputs"].items() if k in ("width", "height") and isinstance(v, (int, float))]
    if areas:
        scale = max(scale, 64 / min(areas))
    overrides: list[str] = []

    def put(node_id: str, name: str, value: Any) -> None:
        overrides.append(f"{node_id}.{name}={json.dumps(value)}")

    for node_id, node in prompt.items():
        class_type, inputs = node["class_type"], node["inputs"]
        steps = inputs.get("steps") if isinstance(inputs.get("steps"), int) else None
        for name, value in inputs.items():
            if isinstance(value, list):
                continue
            if isinstance(value, str):
                mapped = model_name_for(class_type, name, value, family)
                if mapped is not None:
                    put(node_id, name, mapped)
                elif class_type == "LoadImage" and name == "image":
                    source = CORPUS / INPUT_PICTURES.get(value, FALLBACK_PICTURE)
                    picture = Image.open(source)
                    picture.thumbnail((MAX_SIDE * 2, MAX_SIDE * 2))
                    picture.save(input_dir / value)
                elif "embedding:" in value:
                    put(node_id, name, re.sub(r"embedding:[\w.\-]+", "embedding:tiny-sd15-embedding", value))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                if name in SIZE_INPUTS and scale < 1:
                    scaled = int(round(value * scale / 8)) * 8
                    put(node_id, name, max(scaled, 16 if name in ("width", "height") else 0))
                elif name == "batch_size":
                    put(node_id, name, 1)
                elif name == "steps" and value > STEPS:
                    put(node_id, name, STEPS)
                elif name in ("start_at_step", "end_at_step") and steps and value <= steps:
                    scaled = int(round(value * STEPS / steps))
                    start = inputs.get("start_at_step", 0)
                    if name == "end_at_step" and value > start:  # keep at least one step to run
                        scaled = max(scaled, int(round(start * STEPS / steps)) + 1)
                    put(node_id, name, scaled)
                elif name in ("feathering", "feather", "grow_mask_by") and scale < 1:
                    put(node_id, name, int(round(value * scale)))
    return overrides


def copy_corpus_png(png: Path, target_dir: Path) -> Path:
    target = target_dir / png.name
    shutil.copy(png, target)
    return target
