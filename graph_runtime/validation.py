"""Prompt validation before anything is queued, with ComfyUI's error types and shapes.

Differences from ComfyUI, all in the user's favour: cycles and links to missing nodes are
reported explicitly (not as a RecursionError/KeyError), COMBO inputs of every form are checked
against their options, the strings "true"/"false" coerce to the booleans they name, and a
literal given to a socket input is reported instead of crashing at run time.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from graph_runtime.context import NodeError
from graph_runtime.node_info import input_entry
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.schema import AUTOGROW, DYNAMIC_COMBO, InputSpec, NodeDefinition


@dataclass
class PromptError:
    type: str
    message: str
    details: str = ""
    extra_info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "details": self.details, "extra_info": self.extra_info}


@dataclass
class ValidationResult:
    ok: bool
    prompt: dict[str, Any]
    outputs: list[str]
    error: PromptError | None = None
    node_errors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def response(self) -> dict[str, Any]:
        """The body of ComfyUI's 400 response."""
        return {"error": self.error.to_dict() if self.error else None, "node_errors": self.node_errors}

    def summary(self) -> str:
        """A readable multi-line description for the command line."""
        if self.ok:
            return "ok"
        lines = [f"{self.error.message}" + (f": {self.error.details}" if self.error and self.error.details else "")]
        for node_id, entry in self.node_errors.items():
            for err in entry["errors"]:
                name = err["extra_info"].get("input_name")
                where = f"node {node_id} ({entry['class_type']})" + (f", input '{name}'" if name else "")
                lines.append(f"  {where}: {err['message']}" + (f" — {err['details']}" if err["details"] else ""))
        return "\n".join(lines)


def is_link(value: Any) -> bool:
    """``[source_node_id, output_index]``: a string id and a whole, finite index (``1.0`` counts)."""
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
        return False
    slot = value[1]
    if isinstance(slot, bool):
        return False
    return isinstance(slot, int) or (isinstance(slot, float) and slot.is_integer())


def types_match(received: str, expected: str) -> bool:
    if received == expected or received == "*" or expected == "*":
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def coerce(spec_type: str, value: Any) -> Any:
    """Convert a literal to the declared primitive type (raises ValueError/TypeError on failure)."""
    if spec_type == "INT":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            return int(value)
        return int(value) if not isinstance(value, str) else int(float(value)) if "." in value else int(value)
    if spec_type == "FLOAT":
        result = float(value)
        if math.isnan(result):
            raise ValueError("NaN is not allowed")
        return result
    if spec_type == "STRING":
        if isinstance(value, (dict, list)):
            raise TypeError("expected text")
        return str(value)
    if spec_type == "BOOLEAN":
        if isinstance(value, str):
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"{value!r} is not a boolean")
        return bool(value)
    return value


def _find_cycle(prompt: dict[str, Any], roots: Iterable[str]) -> list[str] | None:
    """An explicit, iterative cycle search over links reachable from ``roots``."""
    WHITE, GREY, BLACK = 0, 1, 2
    color: dict[str, int] = {}
    for root in roots:
        if color.get(root):
            continue
        stack: list[tuple[str, Any]] = [(root, None)]
        path: list[str] = []
        while stack:
            node_id, it = stack[-1]
            if it is None:
                color[node_id] = GREY
                path.append(node_id)
                inputs = (prompt.get(node_id) or {}).get("inputs") or {}
                it = iter([v[0] for v in inputs.values() if is_link(v) and v[0] in prompt])
                stack[-1] = (node_id, it)
            nxt = next(it, None)
            if nxt is None:
                color[node_id] = BLACK
                path.pop()
                stack.pop()
                continue
            state = color.get(nxt, WHITE)
            if state == GREY:
                return path[path.index(nxt):] + [nxt]
            if state == WHITE:
                stack.append((nxt, None))
    return None


class PromptValidator:
    """Validates API-format prompts against one registry."""

    def __init__(self, registry: NodeRegistry, paths: FolderPaths | None = None, options: Any = None) -> None:
        self.registry = registry
        self.paths = paths
        self.options = options  # RuntimeOptions, for ``validate_inputs(..., options)`` (device-dependent checks)

    def validate(self, prompt: Any, partial_targets: list[str] | None = None) -> ValidationResult:
        if not isinstance(prompt, dict) or not prompt:
            return ValidationResult(False, {}, [], PromptError("no_prompt", "No prompt provided",
                                                               "The prompt must be a non-empty JSON object"))
        for node_id, node in prompt.items():
            shape = _node_shape_error(node_id, node)
            if shape is not None:
                return self._invalid(shape[0], shape[1], {})
        prompt = {str(k): dict(v, inputs=dict(v.get("inputs") or {})) for k, v in prompt.items()}
        for node_id, node in prompt.items():
            if node["class_type"] not in self.registry:
                return self._invalid(f"Cannot execute because node {node['class_type']} does not exist.",
                                     f"Node ID '#{node_id}': unknown node type '{node['class_type']}'. "
                                     "Install the node pack that provides it, or remove the node.", prompt)
        outputs = [nid for nid, node in prompt.items() if self.registry.get(node["class_type"]).output_node]
        if partial_targets is not None:
            wanted = {str(t) for t in partial_targets}
            outputs = [nid for nid in outputs if nid in wanted]
        if not outputs:
            return ValidationResult(False, prompt, [], PromptError("prompt_no_outputs", "Prompt has no outputs", ""))

        cycle = _find_cycle(prompt, outputs)
        if cycle:
            chain = " -> ".join(f"{n} ({prompt[n]['class_type']})" for n in cycle)
            node_errors = {n: {"errors": [PromptError("dependency_cycle", "Dependency cycle detected",
                                                       f"The links form a loop: {chain}. Remove one link of the loop.",
                                                       {}).to_dict()],
                               "dependent_outputs": outputs, "class_type": prompt[n]["class_type"]}
                           for n in dict.fromkeys(cycle)}
            return ValidationResult(False, prompt, outputs,
                                    PromptError("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                                f"Dependency cycle detected: {chain}"), node_errors)

        own_errors: dict[str, list[PromptError]] = {}
        valid: dict[str, bool] = {}
        for node_id in self._post_order(prompt, outputs):
            errors = self._check_node(node_id, prompt)
            sources_ok = all(valid.get(v[0], True) for v in prompt[node_id]["inputs"].values() if is_link(v))
            own_errors[node_id] = errors
            valid[node_id] = not errors and sources_ok

        node_errors: dict[str, dict[str, Any]] = {}
        good_outputs, bad_outputs = [], []
        for out in outputs:
            (good_outputs if valid.get(out) else bad_outputs).append(out)
        for node_id, errors in own_errors.items():
            if errors:
                node_errors[node_id] = {"errors": [e.to_dict() for e in errors],
                                        "dependent_outputs": [o for o in outputs if self._depends(prompt, o, node_id)],
                                        "class_type": prompt[node_id]["class_type"]}
        if not good_outputs:
            details = "\n".join(f"{e.message}: {e.details}" for errs in own_errors.values() for e in errs)
            return ValidationResult(False, prompt, outputs,
                                    PromptError("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                                details), node_errors)
        return ValidationResult(True, prompt, good_outputs, None, node_errors)

    # -- helpers ------------------------------------------------------------------------------
    def _invalid(self, message: str, details: str, prompt: dict) -> ValidationResult:
        return ValidationResult(False, prompt, [], PromptError("invalid_prompt", message, details))

    @staticmethod
    def _post_order(prompt: dict[str, Any], roots: list[str]) -> list[str]:
        """Nodes reachable from ``roots`` through links, sources before consumers (graph is acyclic here)."""
        order: list[str] = []
        seen: set[str] = set()
        for root in roots:
            if root in seen:
                continue
            stack: list[tuple[str, bool]] = [(root, False)]
            while stack:
                node_id, expanded = stack.pop()
                if expanded:
                    order.append(node_id)
                    continue
                if node_id in seen:
                    continue
                seen.add(node_id)
                stack.append((node_id, True))
                for value in prompt[node_id]["inputs"].values():
                    if is_link(value) and value[0] in prompt and value[0] not in seen:
                        stack.append((value[0], False))
        return order

    @staticmethod
    def _depends(prompt: dict[str, Any], output: str, node_id: str) -> bool:
        if output == node_id:
            return True
        return node_id in PromptValidator._post_order(prompt, [output])

    def _check_node(self, node_id: str, prompt: dict[str, Any]) -> list[PromptError]:
        node = prompt[node_id]
        definition = self.registry.get(node["class_type"])
        inputs: dict[str, Any] = node["inputs"]
        errors: list[PromptError] = []
        custom = getattr(definition.node_class, "validate_inputs", None) if definition.has_custom_validation else None
        custom_params = _custom_params(custom)
        literals: dict[str, Any] = {}
        received_types: dict[str, str] = {}
        active = _active_specs(definition, inputs)
        declared = set(definition.input_map) | {spec.name for spec in active}
        for spec in active:
            cfg = input_entry(spec, None) if spec.type != "COMBO" else None
            if spec.name not in inputs:
                if not spec.optional:
                    errors.append(PromptError("required_input_missing", "Required input is missing", spec.name,
                                              {"input_name": spec.name}))
                continue
            value = inputs[spec.name]
            if isinstance(value, list):  # as in ComfyUI, any list is a link; list literals use {"__value__": [...]}
                err = self._check_link(spec, value, prompt, received_types, custom_params, cfg)
                if err:
                    errors.append(err)
                continue
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
                inputs[spec.name] = value
            err, value = self._check_literal(spec, value, custom_params, cfg)
            if err:
                errors.append(err)
                continue
            inputs[spec.name] = value
            literals[spec.name] = value
        for name, value in inputs.items():
            # Undeclared inputs (ComfyUI's variadic ``**kwargs`` nodes) are passed on as they are,
            # so a link among them must be checked like any other: the executor follows it.
            if name not in declared and isinstance(value, list):
                err = self._check_link(InputSpec(name, "*", optional=True), value, prompt, received_types,
                                       custom_params, None)
                if err:
                    errors.append(err)
        if custom is not None and not errors:
            errors.extend(self._run_custom(custom, custom_params, definition, inputs, literals, received_types))
        return errors

    def _check_link(self, spec: InputSpec, value: list, prompt: dict[str, Any], received_types: dict[str, str],
                    custom_params: set[str] | None, cfg: list | None) -> PromptError | None:
        extra = {"input_name": spec.name, "input_config": cfg, "received_value": value}
        if len(value) != 2 or not is_link(value):
            return PromptError("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                               spec.name, extra)
        source_id, slot = value[0], int(value[1])
        if source_id not in prompt:
            return PromptError("bad_linked_input", "Bad linked input, the linked node does not exist",
                               f"{spec.name}: node '{source_id}' is not in the prompt", extra)
        source_def = self.registry.get(prompt[source_id]["class_type"])
        if not 0 <= slot < len(source_def.outputs):
            return PromptError("bad_linked_input", "Bad linked input, the output slot does not exist",
                               f"{spec.name}: node '{source_id}' ({source_def.class_type}) has "
                               f"{len(source_def.outputs)} outputs, not slot {slot}", extra)
        received = source_def.outputs[slot].type
        received_types[spec.name] = received
        expected = spec.type
        if expected == "COMBO":
            expected = received if received in ("COMBO", "*", "STRING") else "COMBO"
        takes_types = custom_params is not None and "input_types" in custom_params
        if not takes_types and not types_match(received, expected):
            return PromptError("return_type_mismatch", "Return type mismatch between linked nodes",
                               f"{spec.name}, received_type({received}) mismatch input_type({spec.type})",
                               {"input_name": spec.name, "input_config": cfg, "received_type": received,
                                "linked_node": value})
        return None

    def _check_literal(self, spec: InputSpec, value: Any, custom_params: set[str] | None,
                       cfg: list | None) -> tuple[PromptError | None, Any]:
        extra = {"input_name": spec.name, "input_config": cfg, "received_value": value}
        if spec.type not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "*"):
            return PromptError("invalid_input_type", f"Input '{spec.name}' must be linked to a {spec.type} output",
                               f"{spec.name}, got the literal value {value!r}; connect a node that outputs "
                               f"{spec.type}", extra), value
        try:
            value = coerce(spec.type, value)
        except (ValueError, TypeError, OverflowError) as exc:
            return PromptError("invalid_input_type", f"Failed to convert an input value to a {spec.type} value",
                               f"{spec.name}, {value!r}, {exc}", extra), value
        skip_range = custom_params is not None and (spec.name in custom_params or "**" in custom_params)
        if skip_range and spec.type == "COMBO" and isinstance(spec.options, (list, tuple)):
            skip_range = False
        if skip_range:
            return None, value
        if spec.type in ("INT", "FLOAT"):
            if spec.min is not None and value < spec.min:
                return PromptError("value_smaller_than_min", f"Value {value} smaller than min of {spec.min}",
                                   f"{spec.name}", extra), value
            if spec.max is not None and value > spec.max:
                return PromptError("value_bigger_than_max", f"Value {value} bigger than max of {spec.max}",
                                   f"{spec.name}", extra), value
        if spec.type == "COMBO":
            options = spec.combo_options(self.paths)
            if value not in options:
                shown = options if len(options) <= 20 else f"(list of length {len(options)})"
                hint = " (no files found: put one in the model folder)" if not options and spec.options is not None \
                    and not isinstance(spec.options, (list, tuple)) else ""
                return PromptError("value_not_in_list", "Value not in list",
                                   f"{spec.name}: '{value}' not in {shown}{hint}",
                                   {"input_name": spec.name,
                                    "input_config": None if len(options) > 20 else [options, {}],
                                    "received_value": value}), value
        return None, value

    def _run_custom(self, custom: Any, params: set[str] | None, definition: NodeDefinition, inputs: dict[str, Any],
                    literals: dict[str, Any], received_types: dict[str, str]) -> list[PromptError]:
        kwargs = {spec.name: literals.get(spec.name) for spec in definition.inputs}
        if params is not None and "**" not in params:
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        if params is not None and "input_types" in params:
            kwargs["input_types"] = received_types
        if params is not None and "paths" in params:
            kwargs["paths"] = self.paths
        if params is not None and "options" in params:
            kwargs["options"] = self.options
        name: str | None = None
        try:
            result = custom(**kwargs)
        except NodeError as exc:  # a node's own error names the input at fault (or none: a setting)
            result, name = str(exc), exc.input_name or ""
        except Exception as exc:  # a node's own validation must not crash the server
            result = f"{type(exc).__name__}: {exc}"
        if result is True:
            return []
        message = result if isinstance(result, str) else "invalid inputs"
        if name is None:
            names = [k for k in kwargs if k not in ("input_types", "paths", "options")] or [""]
            name = names[0]
        return [PromptError("custom_validation_failed", "Custom validation failed for node",
                            f"{name} - {message}" if name else message, {"input_name": name})]


def _node_shape_error(node_id: str, node: Any) -> tuple[str, str] | None:
    """(message, details) when a prompt entry is not ``{"class_type": str, "inputs": {...}}``.

    Checked for every node before anything else looks at the prompt, so a malformed body is a
    clear 400 naming the node instead of a crash deeper down.
    """
    where = f"Node ID '#{node_id}'"
    if not isinstance(node, dict):
        return ("Cannot execute because a node is not an object.",
                f"{where}: expected {{\"class_type\": ..., \"inputs\": {{...}}}}, got {type(node).__name__}")
    if "class_type" not in node:
        return "Cannot execute because a node is missing the class_type property.", where
    if not isinstance(node["class_type"], str):
        return ("Cannot execute because a node's class_type is not a string.",
                f"{where}: class_type is {type(node['class_type']).__name__}; give the node type's name")
    inputs = node.get("inputs")
    if inputs is not None and not isinstance(inputs, dict):
        return ("Cannot execute because a node's inputs are not an object.",
                f"{where}: inputs is {type(inputs).__name__}; expected {{input_name: value or [node_id, slot]}}")
    return None


def _active_specs(definition: NodeDefinition, inputs: dict[str, Any]) -> list[InputSpec]:
    """The inputs to check for this prompt node: dynamic combos as combos of their keys followed by the
    chosen option's inputs (``NAME.CHILD``), autogrow inputs as their slots."""
    specs: list[InputSpec] = []
    for spec in definition.inputs:
        if spec.type == DYNAMIC_COMBO:
            specs.append(replace(spec, type="COMBO", dynamic=None))
            chosen = inputs.get(spec.name, spec.default)
            if spec.name in inputs or not spec.optional:
                specs.extend(spec.children(chosen if isinstance(chosen, str) else None))
        elif spec.type == AUTOGROW:
            specs.extend(spec.children())
        else:
            specs.append(spec)
    return specs


def _custom_params(fn: Any) -> set[str] | None:
    if fn is None:
        return None
    params = inspect.signature(fn).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names.add("**")
    return names
