"""Showing and saving text: ComfyUI's ``PreviewAny`` and ``SaveText``."""
from __future__ import annotations

import json
from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Combo, Node, NodeResult, Output, Socket, String

TEXT_FORMATS = ("txt", "md", "json")


def as_text(value: Any) -> str:
    """How a value reads on a node: strings as they are, JSON-able values as JSON, tensors by shape."""
    if isinstance(value, str):
        return value
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__} shape={list(shape)} dtype={value.dtype}"
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


class PreviewAny(Node):
    """Shows any value as text on the node."""

    DISPLAY_NAME = "Preview Any"
    CATEGORY = "utils"
    OUTPUT_NODE = True
    INPUTS = (Socket("source", "*"),)
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, source: Any = None):
        text = as_text(source)
        return NodeResult((text,), {"text": [text]})


class SaveText(Node):
    """Writes text to ``output/PREFIX_00001_.txt`` and shows it on the node."""

    DISPLAY_NAME = "Save Text"
    CATEGORY = "text"
    OUTPUT_NODE = True
    INPUTS = (String("text", "", multiline=True, force_input=True),
              String("filename_prefix", "ComfyUI", tooltip="Prefix of the file name; may hold a subfolder."),
              Combo("format", TEXT_FORMATS, "txt"))
    OUTPUTS = (Output("STRING", "text"),)

    def execute(self, ctx: NodeContext, text: str, filename_prefix: str = "ComfyUI", format: str = "txt"):
        from nodes.image import next_save_path

        if not isinstance(text, str):
            text = as_text(text)
        if format not in TEXT_FORMATS:
            raise NodeError(f"format: {format!r} is not one of {', '.join(TEXT_FORMATS)}", input_name="format")
        folder, base, counter = next_save_path(ctx.paths.output_dir, filename_prefix or "ComfyUI", 0, 0)
        while (path := folder / f"{base}_{counter:05}_.{format}").exists():
            counter += 1
        path.write_text(text, encoding="utf-8")
        ctx.record(saved=str(path.relative_to(ctx.paths.output_dir.resolve())))
        return NodeResult((text,), {"text": [text]})
