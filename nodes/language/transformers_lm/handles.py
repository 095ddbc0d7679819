"""The one place the language packs get models from the model manager.

A model is keyed by its weights' identity (path, mtime, size) and the load options, so two loader
nodes with the same settings share one resident copy, and changed options load another.
"""
from __future__ import annotations

from typing import Any

from graph_runtime.context import NodeContext, NodeError
from nodes.language.transformers_lm import catalog
from nodes.language.transformers_lm.loading import LanguageModel, LoadError, LoadOptions, load_language_model


def resolve_source(ctx: NodeContext, folder: str, name: str, input_name: str = "model_name") -> catalog.ModelSource:
    source = catalog.resolve(ctx.paths, folder, name)
    if source is None:
        dirs = ", ".join(str(d) for d in ctx.paths.model_dirs(folder))
        raise NodeError(f"{input_name}: model {name!r} not found in models/{folder} ({dirs}); put a transformers "
                        f"folder (config.json + weights + tokenizer) or a .gguf file there", input_name=input_name)
    return source


def load_model(ctx: NodeContext, folder: str, name: str, options: LoadOptions, *, vision: bool,
               input_name: str = "model_name") -> LanguageModel:
    """Load (or reuse) a model through the model manager; loading problems name ``input_name``."""
    source = resolve_source(ctx, folder, name, input_name)
    key = ("vlm" if vision else "llm", *source.identity(), source.gguf_file, options)

    def load() -> LanguageModel:
        lm = load_language_model(source, options, vision=vision, runtime_device=ctx.options.device)
        lm.key = key
        return lm

    try:
        lm = ctx.models.get(key, load)
    except LoadError as exc:
        bad = "quantization" if str(exc).startswith("quantization:") else \
            "device" if str(exc).startswith("device:") else input_name
        raise NodeError(f"{bad}: {exc}" if bad == input_name else str(exc), input_name=bad) from exc
    ctx.record(model=source.name, model_type=lm.model_type, quantization=options.quantization,
               dtype=str(lm.model.dtype).replace("torch.", ""), device=str(lm.device))
    return lm


def models_of(ctx: NodeContext) -> Any:
    """The manager that keeps derived state (prefix KV caches) under the same memory budget."""
    return ctx.models
