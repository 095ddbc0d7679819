"""Convert a ComfyUI UI-format workflow into an API-format prompt.

This reproduces what the official frontend does on "Run" (``graphToPrompt`` with its executable
node DTOs), so a workflow saved from the UI, shared as a PNG or shipped as a template runs
headless with the same inputs the browser would have sent:

* widget values are mapped to input names through the node definition (:mod:`.widgets`);
* links are resolved through Reroutes, PrimitiveNodes, bypassed nodes (mode 4: the consumer is
  wired to the bypassed node's first input of a matching type) and subgraphs (flattened to ids
  ``outer:inner``, nested ``a:b:c``);
* muted nodes (mode 2), bypassed nodes and frontend-only nodes are not emitted, and a consumer
  loses any input still linked to a node that was not emitted;
* list-valued widgets are wrapped as ``{"__value__": [...]}`` so they are not read as links.

Unknown node classes are kept (with linked inputs only, plus values saved by name) and reported
as warnings: the caller's validation turns them into the user-facing error.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from graph_runtime.workflow_files import virtual_nodes as vn
from graph_runtime.workflow_files.errors import WorkflowFormatError
from graph_runtime.workflow_files.graph_model import (
    SUBGRAPH_INPUT_NODE, Graph, Link, parse_graph, subgraph_definitions)
from graph_runtime.workflow_files.node_defs import NodeDefCatalog, NodeDefView
from graph_runtime.workflow_files.widgets import map_widget_values

log = logging.getLogger(__name__)

_CONTROL_WIDGET_NAMES = frozenset({"control_after_generate", "control_filter_list", "upload"})


@dataclass
class ConversionResult:
    """The API prompt plus everything the conversion had to guess or drop."""

    prompt: dict[str, dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _LinkRef:
    node_id: str
    slot: int


@dataclass(frozen=True)
class _Literal:
    value: Any


_Resolved = _LinkRef | _Literal | None


@dataclass
class _Scope:
    """One graph level being flattened: the root, or one subgraph instance's definition."""

    graph: Graph
    path: tuple[str, ...]
    parent: "_Scope | None" = None
    instance: dict[str, Any] | None = None
    subgraph_chain: tuple[str, ...] = ()
    promoted: dict[int, Any] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def exec_id(self, node_id: str) -> str:
        return ":".join(self.path + (node_id,))


def _wrap(value: Any) -> Any:
    """Lists would look like links to the backend; the frontend boxes them the same way."""
    return {"__value__": value} if isinstance(value, (list, tuple)) else value


def _types_compatible(a: Any, b: Any) -> bool:
    """litegraph ``isValidConnection``: wildcards, case-insensitive, comma-separated unions."""
    if not a or not b or a == "*" or b == "*":
        return True
    sa, sb = str(a).upper(), str(b).upper()
    if sa == sb:
        return True
    return bool(set(sa.split(",")) & set(sb.split(",")))


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], node_defs: Mapping[str, Mapping[str, Any]]):
        if not isinstance(workflow, Mapping):
            raise WorkflowFormatError("a UI workflow must be a JSON object")
        if "nodes" not in workflow:
            if workflow and all(isinstance(v, Mapping) and "class_type" in v for v in workflow.values()):
                raise WorkflowFormatError("this is already an API-format prompt, not a UI workflow")
            raise WorkflowFormatError("UI workflow has no 'nodes' list")
        self.defs = NodeDefCatalog(node_defs)
        self.subgraphs_raw = subgraph_definitions(workflow)
        self.subgraph_graphs: dict[str, Graph] = {}
        self.root = _Scope(parse_graph(workflow, "workflow"), ())
        self.prompt: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        self._children: dict[tuple[tuple[str, ...], str], _Scope] = {}

    # ------------------------------------------------------------------ helpers
    def warn(self, message: str) -> None:
        log.info("workflow conversion: %s", message)
        self.warnings.append(message)

    def subgraph(self, subgraph_id: str) -> Graph:
        if subgraph_id not in self.subgraph_graphs:
            raw = self.subgraphs_raw[subgraph_id]
            self.subgraph_graphs[subgraph_id] = parse_graph(raw, f"subgraph {raw.get('name') or subgraph_id}")
        return self.subgraph_graphs[subgraph_id]

    def is_instance(self, node: Mapping[str, Any]) -> bool:
        return node["type"] in self.subgraphs_raw

    def child_scope(self, scope: _Scope, instance: dict[str, Any]) -> _Scope:
        key = (scope.path, str(instance["id"]))
        if key in self._children:
            return self._children[key]
        sub_id = instance["type"]
        if sub_id in scope.subgraph_chain:
            raise WorkflowFormatError(f"subgraph {sub_id} contains an instance of itself")
        child = _Scope(self.subgraph(sub_id), scope.path + (str(instance["id"]),), scope, instance,
                       scope.subgraph_chain + (sub_id,))
        self._assign_instance_widgets(child)
        self._children[key] = child
        return child

    # ------------------------------------------------- subgraph instance widgets
    def _promoted_target(self, graph: Graph, slot: int) -> tuple[dict[str, Any], str] | None:
        """The inner (node, widget name) a subgraph input is wired to, if it feeds a widget."""
        for link in graph.links_from_input(slot):
            target = graph.nodes.get(link.target_id)
            if target is None:
                continue
            entry = self._entry_for_link(target, link)
            if entry is not None and isinstance(entry.get("widget"), Mapping):
                return target, str(entry["widget"].get("name") or entry.get("name"))
        return None

    def _widget_has_control(self, node: Mapping[str, Any], widget: str, depth: int) -> bool:
        """Whether the concrete widget behind a (possibly nested) promoted input has a control."""
        while self.is_instance(node) and depth <= len(self.subgraphs_raw):
            graph = self.subgraph(node["type"])
            slot = next((j for j, i in enumerate(graph.inputs) if i.get("name") == widget), None)
            target = self._promoted_target(graph, slot) if slot is not None else None
            if target is None:
                return False
            node, widget = target
            depth += 1
        node_def = self.defs.get(node["type"])
        spec = node_def.input(widget) if node_def else None
        return spec is not None and spec.has_control

    def _assign_instance_widgets(self, scope: _Scope) -> None:
        """Per-instance values of promoted widgets (``widgets_values`` of the instance node).

        Current frontends save one value per subgraph input that feeds an inner widget, in input
        order; older ones also saved a ``control_after_generate`` value after seed-like widgets,
        and the short-lived proxy-widget format saved one value per ``properties.proxyWidgets``
        entry.  Unset values (``None``) leave the inner node's own value in place.
        """
        instance, graph = scope.instance or {}, scope.graph
        values = instance.get("widgets_values")
        if not values:
            return
        targets = {j: self._promoted_target(graph, j) for j in range(len(graph.inputs))}
        promoted = [j for j, t in targets.items() if t is not None]
        where = f"subgraph instance {scope.exec_id('')[:-1]}"
        if isinstance(values, Mapping):
            for j in promoted:
                name = graph.inputs[j].get("name")
                if name in values and values[name] is not None:
                    scope.promoted[j] = values[name]
            return
        if not isinstance(values, list):
            self.warn(f"{where}: widgets_values ignored (not a list)")
            return
        if len(values) == len(promoted):
            scope.promoted.update({j: v for j, v in zip(promoted, values) if v is not None})
            return
        if len(values) > len(promoted):
            index, mapped = 0, {}
            for j in promoted:
                if index >= len(values):
                    break
                mapped[j] = values[index]
                index += 1
                if self._widget_has_control(*targets[j], depth=len(scope.subgraph_chain)):
                    index += 1
            if index == len(values):
                scope.promoted.update({j: v for j, v in mapped.items() if v is not None})
                return
        proxies = (instance.get("properties") or {}).get("proxyWidgets")
        if isinstance(proxies, list) and len(proxies) == len(values):
            by_name = {graph.inputs[j].get("name"): j for j in promoted}
            for entry, value in zip(proxies, values):
                if not (isinstance(entry, (list, tuple)) and len(entry) >= 2) or value is None:
                    continue
                node_id, widget = str(entry[0]), str(entry[1])
                if widget in _CONTROL_WIDGET_NAMES:
                    continue
                if node_id == "-1":
                    if widget in by_name:
                        scope.promoted[by_name[widget]] = value
                else:
                    scope.overrides.setdefault(node_id, {})[widget] = value
            return
        self.warn(f"{where}: {len(values)} widget value(s) for {len(promoted)} promoted input(s); "
                  "using the values inside the subgraph")

    # --------------------------------------------------------------- resolution
    @staticmethod
    def _entry_for_link(node: Mapping[str, Any], link: Link) -> dict[str, Any] | None:
        entries = node.get("inputs") or []
        for entry in entries:
            if isinstance(entry, Mapping) and entry.get("link") is not None and str(entry["link"]) == link.id:
                return entry
        if 0 <= link.target_slot < len(entries) and isinstance(entries[link.target_slot], Mapping):
            return entries[link.target_slot]
        return None

    def resolve_input(self, scope: _Scope, node: Mapping[str, Any], entry: Mapping[str, Any],
                      want_type: Any, visited: set) -> _Resolved:
        link_id = entry.get("link")
        if link_id is None:
            return None
        link = scope.graph.links.get(str(link_id))
        if link is None:
            self.warn(f"node {scope.exec_id(str(node['id']))} input '{entry.get('name')}' names link "
                      f"{link_id}, which the workflow does not contain; input left unconnected")
            return None
        return self.resolve_link(scope, link, want_type, visited)

    def resolve_link(self, scope: _Scope, link: Link, want_type: Any, visited: set) -> _Resolved:
        if link.origin_id == SUBGRAPH_INPUT_NODE and scope.parent is not None:
            return self.resolve_subgraph_input(scope, link.origin_slot, want_type, visited)
        origin = scope.graph.nodes.get(link.origin_id)
        if origin is None:
            raise WorkflowFormatError(f"{scope.graph.name}: link {link.id} comes from node {link.origin_id}, "
                                      "which does not exist")
        return self.resolve_output(scope, origin, link.origin_slot, want_type, visited)

    def _instance_entry(self, scope: _Scope, slot: int) -> Mapping[str, Any] | None:
        entries = [e for e in (scope.instance or {}).get("inputs") or [] if isinstance(e, Mapping)]
        inputs = scope.graph.inputs
        if slot < len(inputs):
            name = inputs[slot].get("name")
            for entry in entries:
                if entry.get("name") == name:
                    return entry
            if not any(e.get("name") in {i.get("name") for i in inputs} for e in entries) and slot < len(entries):
                return entries[slot]
        return None

    def resolve_subgraph_input(self, scope: _Scope, slot: int, want_type: Any, visited: set) -> _Resolved:
        key = ("in", scope.path, slot)
        if key in visited:
            raise WorkflowFormatError(f"link cycle through subgraph input {slot} of {scope.path}")
        visited.add(key)
        entry = self._instance_entry(scope, slot)
        if entry is not None and entry.get("link") is not None and scope.parent is not None:
            return self.resolve_input(scope.parent, scope.instance or {}, entry, want_type, visited)
        if slot in scope.promoted:
            return _Literal(scope.promoted[slot])
        return None

    @staticmethod
    def _bypass_index(node: Mapping[str, Any], slot: int, want_type: Any) -> int | None:
        entries = [e if isinstance(e, Mapping) else {} for e in node.get("inputs") or []]
        outputs = node.get("outputs") or []
        out_type = outputs[slot].get("type") if slot < len(outputs) and isinstance(outputs[slot], Mapping) else None
        if not entries:
            return None
        if want_type in (None, "", "*"):
            return slot if slot < len(entries) else 0
        if slot < len(entries) and _types_compatible(entries[slot].get("type"), out_type) \
                and _types_compatible(entries[slot].get("type"), want_type):
            return slot
        for index, entry in enumerate(entries):
            if entry.get("type") == want_type:
                return index
        for index, entry in enumerate(entries):
            if _types_compatible(entry.get("type"), out_type) and _types_compatible(entry.get("type"), want_type):
                return index
        return None

    def resolve_output(self, scope: _Scope, node: Mapping[str, Any], slot: int, want_type: Any,
                       visited: set) -> _Resolved:
        node_id = str(node["id"])
        key = ("out", scope.path, node_id, slot)
        if key in visited:
            raise WorkflowFormatError(f"link cycle through node {scope.exec_id(node_id)}")
        visited.add(key)
        node_type = node["type"]
        entries = [e if isinstance(e, Mapping) else {} for e in node.get("inputs") or []]
        # Frontend-only nodes act the same whatever their mode (the frontend applies them first).
        if node_type in vn.PASS_THROUGH_TYPES:
            entry = entries[slot] if slot < len(entries) else (entries[0] if entries else None)
            return self.resolve_input(scope, node, entry, want_type, visited) if entry else None
        if node_type in vn.PRIMITIVE_TYPES:
            values = node.get("widgets_values")
            if isinstance(values, list) and values:
                return _Literal(values[0])
            if isinstance(values, Mapping) and "value" in values:
                return _Literal(values["value"])
            return None
        if node_type in vn.GET_NODE_TYPES:
            return self._resolve_get_node(scope, node, want_type, visited)
        if node_type in vn.FRONTEND_ONLY_TYPES:
            return None
        mode = node.get("mode", vn.MODE_ALWAYS)
        if mode == vn.MODE_BYPASS:
            index = self._bypass_index(node, slot, want_type)
            if index is None:
                return None
            return self.resolve_input(scope, node, entries[index], want_type, visited)
        if self.is_instance(node) and mode != vn.MODE_NEVER:
            child = self.child_scope(scope, dict(node))
            inner = child.graph.link_into_output(slot)
            if inner is None:
                return None
            return self.resolve_link(child, inner, want_type, visited)
        # A muted node yields a link to an id that is never emitted; the final clean-up removes it.
        return _LinkRef(scope.exec_id(node_id), slot)

    def _resolve_get_node(self, scope: _Scope, node: Mapping[str, Any], want_type: Any, visited: set) -> _Resolved:
        values = node.get("widgets_values") or []
        name = values[0] if isinstance(values, list) and values else None
        for other in scope.graph.nodes.values():
            other_values = other.get("widgets_values") or []
            if other["type"] in vn.SET_NODE_TYPES and isinstance(other_values, list) \
                    and other_values and other_values[0] == name:
                entries = [e for e in other.get("inputs") or [] if isinstance(e, Mapping)]
                return self.resolve_input(scope, other, entries[0], want_type, visited) if entries else None
        self.warn(f"GetNode {scope.exec_id(str(node['id']))}: no SetNode named {name!r}")
        return None

    # ----------------------------------------------------------------- emission
    def run(self) -> ConversionResult:
        self.emit_graph(self.root)
        for node_id, node in self.prompt.items():
            for name, value in list(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in self.prompt:
                    log.debug("node %s: input %s dropped (source %s not executed)", node_id, name, value[0])
                    del node["inputs"][name]
        return ConversionResult(self.prompt, self.warnings)

    def emit_graph(self, scope: _Scope) -> None:
        for node_id in scope.graph.order:
            node = scope.graph.nodes[node_id]
            mode = node.get("mode", vn.MODE_ALWAYS)
            if vn.is_frontend_only(node["type"]) or mode in (vn.MODE_NEVER, vn.MODE_BYPASS):
                continue
            if self.is_instance(node):
                self.emit_graph(self.child_scope(scope, node))
            else:
                self.emit_node(scope, node)

    def _input_name(self, node_def: NodeDefView | None, entry: Mapping[str, Any]) -> str:
        name = str(entry.get("name"))
        widget = entry.get("widget")
        if node_def is not None and node_def.input(name) is None and isinstance(widget, Mapping):
            widget_name = widget.get("name")
            if isinstance(widget_name, str) and node_def.input(widget_name) is not None:
                return widget_name
        return name

    def emit_node(self, scope: _Scope, node: Mapping[str, Any]) -> None:
        class_type = node["type"]
        exec_id = scope.exec_id(str(node["id"]))
        node_def = self.defs.get(class_type)
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values")
        if node_def is not None:
            mapped = map_widget_values(node_def, values, self.warn, where=f"node {exec_id}")
            for name, value in scope.overrides.get(str(node["id"]), {}).items():
                if name in mapped:
                    mapped[name] = value
            inputs.update({k: _wrap(v) for k, v in mapped.items()})
        else:
            if class_type.startswith(("workflow>", "workflow/")):
                self.warn(f"node {exec_id}: legacy group node {class_type!r} is not supported; convert "
                          "it to a subgraph in the ComfyUI frontend")
            else:
                self.warn(f"node {exec_id}: unknown node type {class_type!r}; only its links and "
                          "named widget values are kept")
            if isinstance(values, Mapping):
                inputs.update({k: _wrap(v) for k, v in values.items() if k not in _CONTROL_WIDGET_NAMES})
        for entry in node.get("inputs") or []:
            if not isinstance(entry, Mapping) or entry.get("name") is None:
                continue
            resolved = self.resolve_input(scope, node, entry, entry.get("type"), set())
            name = self._input_name(node_def, entry)
            if isinstance(resolved, _LinkRef):
                inputs[name] = [resolved.node_id, resolved.slot]
            elif isinstance(resolved, _Literal):
                inputs[name] = _wrap(resolved.value)
        title = node.get("title") or (node_def.display_name if node_def else class_type)
        self.prompt[exec_id] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}


def convert_ui_workflow(workflow: Mapping[str, Any], node_defs: Mapping[str, Mapping[str, Any]]) -> ConversionResult:
    """Convert a UI-format workflow; returns the prompt and the conversion warnings.

    ``node_defs`` is ComfyUI ``/object_info`` data (``{class_type: NodeDef}``).  Raises
    :class:`WorkflowFormatError` for structurally broken workflows.
    """
    return _Converter(workflow, node_defs).run()


def convert_ui_to_api(workflow: Mapping[str, Any],
                      node_defs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Convert a UI-format workflow to an API prompt ``{node_id: {class_type, inputs, _meta}}``."""
    return convert_ui_workflow(workflow, node_defs).prompt
