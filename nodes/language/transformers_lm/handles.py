"""The one place the language packs get models from the model manager.

Loaders output a :class:`~graph_runtime.model_manager.ModelHandle` (the manager owns the weights and
may evict them; ``handle.get()`` reloads).  A model is keyed by its weights' identity (path, mtime,
size) and the load options, so two loader nodes with the same settings share one resident copy.
"""
from __future__ import annotations

from typing import Any

from graph_runtime.context import NodeContext, NodeError
from nodes.language.transformers_lm import catalog
from nodes.language.transformers_lm.loading import (LanguageModel, LoadError, LoadOptions, load_language_model,
                                                     resolve_device)


def resolve_source(ctx: NodeContext, folder: str, name: str, input_name: str = "model_name") -> catalog.ModelSource:
    source = catalog.resolve(ctx.paths, folder, name)
    if source is None:
        dirs = ", ".join(str(d) for d in ctx.paths.model_dirs(folder))
        raise NodeError(f"{input_name}: model {name!r} not found in models/{folder} ({dirs}); put a transformers "
                        f"folder (config.json + weights + tokenizer) or a .gguf file there", input_name=input_name)
    return source


def load_model(ctx: NodeContext, folder: str, name: str, options: LoadOptions, *, vision: bool,
               input_name: str = "model_name") -> Any:
    """Load (or reuse) a model through the model manager and return its handle; loading problems name
    ``input_name`` (or the option at fault)."""
    from nodes.devices import TORCH_OPS

    source = resolve_source(ctx, folder, name, input_name)
    key = ("vlm" if vision else "llm", *source.identity(), source.gguf_file, options)

    def load() -> LanguageModel:
        lm = load_language_model(source, options, vision=vision, runtime_device=ctx.options.device)
        lm.key = key
        return lm

    try:
        device = resolve_device(options.device, ctx.options.device)
        handle = ctx.models.load(key, load, ops=TORCH_OPS, device=str(device), sources=(source.weights_path,),
                                 label=source.name, dtype=options.dtype, options={"quantization": options.quantization})
        lm = handle.get()
    except LoadError as exc:
        bad = "quantization" if str(exc).startswith("quantization:") else \
            "device" if str(exc).startswith("device:") else input_name
        raise NodeError(f"{bad}: {exc}" if bad == input_name else str(exc), input_name=bad) from exc
    ctx.record(model=source.name, model_type=lm.model_type, quantization=options.quantization,
               dtype=str(lm.model.dtype).replace("torch.", ""), device=str(lm.device))
    return handle


def loaded(value: Any, input_name: str, what: str = "an LLMLoader or VLMLoader") -> LanguageModel:
    """The :class:`LanguageModel` behind a socket value (a handle, or a model given directly)."""
    lm = value.get() if hasattr(value, "get") and not isinstance(value, LanguageModel) else value
    if not isinstance(lm, LanguageModel):
        raise NodeError(f"{input_name}: connect {what}", input_name=input_name)
    return lm
