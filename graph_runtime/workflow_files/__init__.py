"""Workflow files: reading what ComfyUI users share, and converting UI workflows to API prompts.

Decoupled from the rest of the runtime: the converter only needs ComfyUI ``/object_info`` data
(any mapping ``{class_type: NodeDef}``), so the runtime passes its registry's object_info and
tests can pass a fixture.
"""
from graph_runtime.workflow_files.errors import WorkflowFormatError
from graph_runtime.workflow_files.loader import (
    LoadedWorkflow, classify_json, is_api_prompt, is_ui_workflow, load_image_workflow, load_workflow_file)
from graph_runtime.workflow_files.png_chunks import png_text_chunks, read_image_texts
from graph_runtime.workflow_files.ui_to_api import ConversionResult, convert_ui_to_api, convert_ui_workflow

__all__ = [
    "ConversionResult",
    "LoadedWorkflow",
    "WorkflowFormatError",
    "classify_json",
    "convert_ui_to_api",
    "convert_ui_workflow",
    "is_api_prompt",
    "is_ui_workflow",
    "load_image_workflow",
    "load_workflow_file",
    "png_text_chunks",
    "read_image_texts",
]
