"""VLMLoader, VLMCaption and VLMCaptionFolder: image captions with a vision-language model from ``models/vlm``."""
from __future__ import annotations

import os
from pathlib import Path

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.paths import IMAGE_EXTENSIONS
from graph_runtime.schema import (Boolean, CachePolicy, Float, Int, Node, NodeResult, Output, Resource, Seed, Socket,
                                  String)
from nodes.language.nodes import loader_inputs
from nodes.language.transformers_lm.options import LoadOptions
from nodes.language.transformers_lm.quantization import validate_placement
from nodes.vision_language.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_PROMPT

_MAX_PIXELS_LIMIT = 16384 * 16384


class VLMLoader(Node):
    """Loads a vision-language model (Qwen2/2.5-VL, Florence-2, LLaVA/JoyCaption …) offline, optionally quantized.

    With bnb quantization the vision tower, the projector and lm_head stay unquantized.
    """

    DISPLAY_NAME = "Load VLM"
    CATEGORY = "loaders/language"
    RESOURCE = Resource.GPU
    INPUTS = loader_inputs("vlm")
    OUTPUTS = (Output("VLM"),)

    @classmethod
    def validate_inputs(cls, quantization: str = "none", device: str = "auto"):
        return validate_placement(quantization, device)

    def execute(self, ctx: NodeContext, model_name: str, quantization: str = "none", dtype: str = "auto",
                attention: str = "auto", device: str = "auto"):
        from nodes.language.transformers_lm.handles import load_model

        return (load_model(ctx, "vlm", model_name, LoadOptions(quantization, dtype, attention, device), vision=True),)


def sampling_inputs() -> tuple:
    return (Int("max_new_tokens", 256, min=1, max=8192),
            Float("temperature", 0.0, min=0.0, max=4.0, step=0.05, tooltip="0 = greedy (deterministic)."),
            Float("top_p", 0.9, min=0.0, max=1.0, step=0.01),
            Seed(),
            Int("max_pixels", DEFAULT_MAX_PIXELS, min=28 * 28, max=_MAX_PIXELS_LIMIT, step=28 * 28,
                tooltip="Larger images are scaled down to this many pixels (Qwen: image tokens = pixels / 784)."),
            Int("min_pixels", DEFAULT_MIN_PIXELS, min=0, max=_MAX_PIXELS_LIMIT, step=28 * 28,
                tooltip="Qwen-style processors scale smaller images up to this many pixels (0 = the processor's "
                        "own)."))


def _sampling(max_new_tokens: int, temperature: float, top_p: float, seed: int):
    from nodes.language.transformers_lm.generation import Sampling

    return Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)


def _check_vlm(vlm):
    from nodes.language.transformers_lm.handles import loaded

    lm = loaded(vlm, "vlm", "a VLMLoader")
    if lm.processor is None:
        raise NodeError("vlm: connect a VLMLoader (an LLM has no image processor)", input_name="vlm")
    return lm


class VLMCaption(Node):
    """Describes each image of a batch with a VLM (one caption per image); tokens stream to the node.

    Florence-2 models take task prompts: ``<CAPTION>``, ``<DETAILED_CAPTION>``, ``<MORE_DETAILED_CAPTION>``, ``<OCR>``.
    """

    DISPLAY_NAME = "VLM Caption"
    CATEGORY = "text/vision"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.SEEDED
    INPUTS = (Socket("vlm", "VLM"), Socket("image", "IMAGE"),
              String("prompt", DEFAULT_PROMPT, multiline=True, dynamic_prompts=False)) + sampling_inputs()
    OUTPUTS = (Output("STRING", "caption", is_list=True),)

    def execute(self, ctx: NodeContext, vlm, image, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 256,
                temperature: float = 0.0, top_p: float = 0.9, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                min_pixels: int = DEFAULT_MIN_PIXELS):
        from nodes.vision_language.captioning import caption, tensor_images

        vlm = _check_vlm(vlm)
        sampling = _sampling(max_new_tokens, temperature, top_p, seed)
        pictures = tensor_images(image)
        total = float(len(pictures) * max_new_tokens)
        captions = []
        for i, picture in enumerate(pictures):
            text, _ = caption(ctx, vlm, picture, prompt, sampling, max_pixels=max_pixels, min_pixels=min_pixels,
                              progress_offset=i * max_new_tokens, progress_total=total)
            captions.append(text)
        return (captions,)


def _folder(ctx: NodeContext, value: str, input_name: str, *, must_exist: bool) -> Path:
    """An absolute folder, or one relative to the input folder."""
    text = (value or "").strip()
    if not text:
        raise NodeError(f"{input_name}: give a folder (absolute, or relative to {ctx.paths.input_dir})",
                        input_name=input_name)
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = ctx.paths.input_dir / path
    if must_exist and not path.is_dir():
        raise NodeError(f"{input_name}: folder {path} does not exist", input_name=input_name)
    return path


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` so that ``path`` holds either nothing or the whole caption (resume-safe)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class VLMCaptionFolder(Node):
    """Captions every image of a folder into ``NAME.txt`` beside it (or in ``output_folder``), for LoRA datasets.

    Resumable: images whose caption file exists are skipped unless ``overwrite``; each caption file is
    written whole or not at all, so an interrupted run resumes where it stopped.
    """

    DISPLAY_NAME = "VLM Caption Folder"
    CATEGORY = "text/vision"
    RESOURCE = Resource.GPU
    CACHE = CachePolicy.VOLATILE
    OUTPUT_NODE = True
    INPUTS = (Socket("vlm", "VLM"),
              String("folder", "", tooltip="Folder of images: absolute, or relative to the input folder."),
              String("prompt", DEFAULT_PROMPT, multiline=True, dynamic_prompts=False),
              String("output_folder", "", tooltip="Where the .txt files go; empty = beside the images."),
              String("prefix", "", tooltip="Text put before each caption (e.g. a trigger word)."),
              String("suffix", ""),
              Boolean("overwrite", False, tooltip="Caption again images that already have a caption file.")
              ) + sampling_inputs()
    OUTPUTS = (Output("STRING", "captions", is_list=True), Output("INT", "written"))

    def execute(self, ctx: NodeContext, vlm, folder: str, prompt: str = DEFAULT_PROMPT, output_folder: str = "",
                prefix: str = "", suffix: str = "", overwrite: bool = False, max_new_tokens: int = 256,
                temperature: float = 0.0, top_p: float = 0.9, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                min_pixels: int = DEFAULT_MIN_PIXELS):
        from PIL import Image

        from nodes.vision_language.captioning import caption

        vlm = _check_vlm(vlm)
        source = _folder(ctx, folder, "folder", must_exist=True)
        target = _folder(ctx, output_folder, "output_folder", must_exist=False) if output_folder.strip() else source
        target.mkdir(parents=True, exist_ok=True)
        images = folder_images(source)
        if not images:
            raise NodeError(f"folder: no images in {source}", input_name="folder")
        sampling = _sampling(max_new_tokens, temperature, top_p, seed)
        captions: list[str] = []
        written = skipped = 0
        total = len(images) * max_new_tokens  # the bar moves per image, and per token within one
        ctx.progress(0, total)
        for i, path in enumerate(images):
            out = target / f"{path.stem}.txt"
            if out.exists() and not overwrite:
                captions.append(out.read_text(encoding="utf-8"))
                skipped += 1
            else:
                with Image.open(path) as img:
                    picture = img.convert("RGB")
                text, _ = caption(ctx, vlm, picture, prompt, sampling, max_pixels=max_pixels, min_pixels=min_pixels,
                                  progress_offset=i * max_new_tokens, progress_total=total)
                text = f"{prefix}{text}{suffix}"
                write_atomically(out, text)
                captions.append(text)
                written += 1
            ctx.progress((i + 1) * max_new_tokens, total)
        ctx.record(folder=str(source), captioned=written, skipped=skipped)
        summary = f"{written} captions written, {skipped} already present, in {target}"
        return NodeResult((captions, written), {"text": [summary]})
