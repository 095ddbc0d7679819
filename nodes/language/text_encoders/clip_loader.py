"""``CLIPLoader``'s path for single-file LLM text encoders (Qwen2.5-VL, Qwen3, Gemma-3).

``CLIPLoader`` asks :func:`load_language_clip` first: a file whose header shows one of these language
models becomes a :class:`~.loading.LanguageCLIP` (a model-manager handle to a transformers causal LM
with its tokenizer) that ``TextGenerate`` generates with; any other file returns None and takes the
usual text-encoder path.  The ``type`` widget does not matter here: ComfyUI's templates load the same
file with ``qwen_image``, ``ltxv``, ``flux2`` …, and the architecture is read from the weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from graph_runtime.context import NodeContext, NodeError


def inspect_language_encoder(path: Path) -> tuple[Any, dict] | None:
    """(layout, shapes) when ``path`` is a single-file LLM text encoder we generate with, else None."""
    from nodes.diffusion import model_files
    from nodes.language.text_encoders.layouts import detect

    if path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    try:
        shapes, _ = model_files.inspect(path)
    except model_files.ModelFileError:
        return None  # the usual path reports unreadable files
    layout = detect(shapes)
    return None if layout is None else (layout, shapes)


def load_language_clip(ctx: NodeContext, path: Path, device_option: str = "default",
                       input_name: str = "clip_name") -> Any | None:
    """A LanguageCLIP for ``path`` through the model manager, or None when the file is not an LLM encoder."""
    from nodes.language.text_encoders.layouts import LayoutError

    try:
        found = inspect_language_encoder(path)
    except LayoutError as exc:
        raise NodeError(f"{input_name}: {path.name}: {exc}", input_name=input_name) from exc
    if found is None:
        return None
    layout, shapes = found

    from nodes.devices import TORCH_OPS
    from nodes.diffusion.loading import encoder_dtype, resolve_device
    from nodes.diffusion.model_files import file_key
    from nodes.language.text_encoders.loading import LanguageCLIP, load_text_encoder_lm

    device = resolve_device("cpu" if device_option == "cpu" else ctx.options.device)
    dtype = encoder_dtype(ctx.options.dtype, device)
    key = ("text-encoder-lm", file_key(path), str(device), str(dtype))

    def load() -> Any:
        lm = load_text_encoder_lm(path, layout, shapes, device, dtype)
        lm.key = key
        return lm

    try:
        handle = ctx.models.load(key, load, ops=TORCH_OPS, device=str(device), sources=(path,),
                                 label=path.name, dtype=str(dtype).replace("torch.", ""))
    except LayoutError as exc:
        raise NodeError(f"{input_name}: {path.name}: {exc}", input_name=input_name) from exc
    ctx.record(model_file=path.name, family=layout.family, text_encoder=layout.describe(),
               device=str(device), dtype=str(dtype).replace("torch.", ""))
    return LanguageCLIP(handle, layout, path.name)
