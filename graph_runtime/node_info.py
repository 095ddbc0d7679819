"""ComfyUI ``object_info`` derived from node declarations.

The output matches ComfyUI's V1 NodeDef shape, which the official frontend validates
(``name``, ``display_name``, ``description``, ``category``, ``output_node`` and
``python_module`` are required).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from graph_runtime.paths import FolderPaths
from graph_runtime.schema import AUTOGROW, DYNAMIC_COMBO, AutogrowTemplate, InputSpec, NodeDefinition

_OPTION_FIELDS = (("default", "default"), ("min", "min"), ("max", "max"), ("step", "step"), ("round", "round"),
                  ("tooltip", "tooltip"), ("display", "display"))


def input_entry(spec: InputSpec, paths: FolderPaths | None) -> list:
    """``[TYPE, options]`` for one input (combos in the V1 ``[[options...], {...}]`` form)."""
    opts: dict[str, Any] = {}
    for attr, key in _OPTION_FIELDS:
        value = getattr(spec, attr)
        if value is not None:
            opts[key] = value
    if spec.type == "STRING":
        opts["multiline"] = spec.multiline
        if spec.dynamic_prompts is not None:
            opts["dynamicPrompts"] = spec.dynamic_prompts
    if spec.control_after_generate:
        opts["control_after_generate"] = True
    if spec.lazy:
        opts["lazy"] = True
    if spec.force_input:
        opts["forceInput"] = True
    if spec.image_upload:
        opts["image_upload"] = True
    opts.update(spec.extra)
    if spec.type == DYNAMIC_COMBO:
        opts.pop("default", None)
        opts["options"] = [{"key": o.key, "inputs": input_dict(o.inputs, paths)} for o in spec.dynamic or ()]
        return [spec.type, opts]
    if spec.type == AUTOGROW and isinstance(spec.dynamic, AutogrowTemplate):
        t = spec.dynamic
        template = t.input if not t.input.is_widget else replace(t.input, force_input=True)
        opts["template"] = {"input": input_dict((template,), paths), "prefix": t.prefix, "min": t.min, "max": t.max}
        return [spec.type, opts]
    if spec.type == "COMBO":
        options = spec.combo_options(paths)
        if spec.default is None and "default" in opts:
            del opts["default"]
        return [options, opts] if opts else [options]
    return [spec.type, opts] if opts else [spec.type]


def input_dict(specs: Any, paths: FolderPaths | None) -> dict[str, dict[str, list]]:
    """V1 ``{"required": {...}, "optional": {...}}`` for a group of inputs (a dynamic option's, a template)."""
    out: dict[str, dict[str, list]] = {"required": {}}  # always present, as ComfyUI writes it
    for spec in specs:
        out.setdefault("optional" if spec.optional else "required", {})[spec.name] = input_entry(spec, paths)
    return out


def node_info(definition: NodeDefinition, paths: FolderPaths | None = None) -> dict[str, Any]:
    required: dict[str, list] = {}
    optional: dict[str, list] = {}
    for spec in definition.inputs:
        (optional if spec.optional else required)[spec.name] = input_entry(spec, paths)
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    if definition.hidden:
        inputs["hidden"] = {h.name: h.kind.value for h in definition.hidden}
        order["hidden"] = [h.name for h in definition.hidden]
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": order,
        "output": [o.type for o in definition.outputs],
        "output_is_list": [o.is_list for o in definition.outputs],
        "output_name": [o.display_name for o in definition.outputs],
        "name": definition.class_type,
        "display_name": definition.display_name,
        "description": definition.description,
        "python_module": definition.python_module,
        "category": definition.category,
        "output_node": definition.output_node,
    }
    tooltips = [o.tooltip for o in definition.outputs]
    if any(tooltips):
        info["output_tooltips"] = tooltips
    if definition.deprecated:
        info["deprecated"] = True
    if definition.experimental:
        info["experimental"] = True
    return info


def object_info(definitions: Any, paths: FolderPaths | None = None) -> dict[str, dict[str, Any]]:
    """object_info for every definition of a registry (an iterable of NodeDefinition)."""
    return {d.class_type: node_info(d, paths) for d in definitions}
