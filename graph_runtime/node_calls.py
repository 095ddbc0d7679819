"""Calling one node: ComfyUI's list mapping, ExecutionBlocker, result shapes and node expansion.

A node is called once with whole lists (``INPUT_IS_LIST``) or once per list index of its
longest input (shorter inputs repeat their last item).  Each call returns a tuple, a
:class:`~graph_runtime.schema.NodeResult` or, for output-only nodes, ``None``.

A call may also *expand* into a sub-graph (``NodeResult.expand``, or ``"expand"`` in a ComfyUI V1
result dict): its outputs are then links into that sub-graph, resolved once the executor has run
it.  Expanded node ids are namespaced under the expanding node's id so they never collide with
the prompt's own nodes; links inside the expansion are rewritten to the new ids, links to other
ids keep pointing at the prompt's nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from graph_runtime.schema import ExecutionBlocker, NodeDefinition, NodeResult
from graph_runtime.validation import is_link

Link = tuple[str, int]


class NodeResultError(TypeError):
    """A node returned something that does not match its declared outputs."""


@dataclass
class CallOutcome:
    """What the calls of one node returned, before links into expansions are resolved.

    ``per_call[i][j]`` is output ``j`` of call ``i``: a value, or a :class:`Link` into
    ``expanded`` (the namespaced sub-graph to run first).  ``None`` for a blocked call.
    """

    per_call: list[tuple | ExecutionBlocker]
    ui: dict[str, list] | None = None
    expanded: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def pending_links(self) -> list[Link]:
        links: list[Link] = []
        for values in self.per_call:
            if isinstance(values, tuple):
                links.extend(v for v in values if isinstance(v, _ExpandedLink))
        return links


class _ExpandedLink(tuple):
    """A (node id, output index) link into an expansion (distinct from a tuple output value)."""

    def __new__(cls, node_id: str, index: int) -> "_ExpandedLink":
        return super().__new__(cls, (node_id, index))


def mapped_calls(definition: NodeDefinition, inputs: dict[str, list[Any] | None]) -> list[dict[str, Any]]:
    """The keyword arguments of each call of a node (ComfyUI's list mapping rules)."""
    lists = {k: (v if v is not None else [None]) for k, v in inputs.items()}
    if definition.input_is_list:
        return [lists]
    count = max((len(v) for v in lists.values()), default=1)
    return [{k: (v[i] if len(v) > i else v[-1]) if v else None for k, v in lists.items()}
            for i in range(max(count, 1))]


def find_blocker(kwargs: dict[str, Any], input_is_list: bool) -> ExecutionBlocker | None:
    for value in kwargs.values():
        if isinstance(value, ExecutionBlocker):
            return value
        if input_is_list and isinstance(value, list):
            for item in value:
                if isinstance(item, ExecutionBlocker):
                    return item
    return None


def _namespace(node_id: str, call_index: int, calls: int, graph: dict[str, Any]) -> tuple[dict[str, dict], dict[str, str]]:
    prefix = f"{node_id}." if calls == 1 else f"{node_id}.{call_index}."
    renamed = {str(old): f"{prefix}{old}" for old in graph}
    nodes: dict[str, dict] = {}
    for old, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise NodeResultError(f"expanded node {old!r} needs a class_type and inputs")
        inputs = {}
        for name, value in (node.get("inputs") or {}).items():
            if is_link(value) and str(value[0]) in renamed:
                value = [renamed[str(value[0])], int(value[1])]
            inputs[name] = value
        nodes[renamed[str(old)]] = {"class_type": node["class_type"], "inputs": inputs}
    return nodes, renamed


def collect(definition: NodeDefinition, node_id: str, results: list[Any]) -> CallOutcome:
    """Check each call's result against the declared outputs and gather UI and expansions."""
    n_out = len(definition.outputs)
    outcome = CallOutcome([])
    for index, result in enumerate(results):
        if isinstance(result, ExecutionBlocker):
            outcome.per_call.append(result)
            continue
        expand: dict | None = None
        if isinstance(result, NodeResult):
            values, call_ui, expand = tuple(result.outputs), result.ui, result.expand
        elif isinstance(result, tuple):
            values, call_ui = result, None
        elif result is None and n_out == 0:
            values, call_ui = (), None
        elif result is None:
            raise NodeResultError(f"{definition.class_type} (node {node_id}) returned nothing for its "
                                  f"{n_out} declared output(s) {list(definition.output_types)}; "
                                  "execute must return one value per output")
        else:
            raise NodeResultError(f"{definition.class_type} (node {node_id}) must return a tuple or NodeResult, "
                                  f"got {type(result).__name__}")
        if len(values) != n_out:
            raise NodeResultError(f"{definition.class_type} (node {node_id}) returned {len(values)} value(s) for "
                                  f"{n_out} declared output(s)")
        if expand:
            nodes, renamed = _namespace(node_id, index, len(results), expand)
            outcome.expanded.update(nodes)
            values = tuple(_ExpandedLink(renamed[str(v[0])], int(v[1])) if is_link(v) and str(v[0]) in renamed else v
                           for v in values)
        outcome.per_call.append(values)
        if call_ui:
            if outcome.ui is None:
                outcome.ui = {k: list(v) for k, v in call_ui.items()}
            else:
                for k, v in call_ui.items():
                    outcome.ui.setdefault(k, []).extend(v)
    return outcome


def assemble(definition: NodeDefinition, outcome: CallOutcome,
             resolve: Callable[[str, int], list[Any]]) -> list[list[Any]]:
    """The node's outputs (one list per output slot) once every expansion link can be resolved."""
    outputs: list[list[Any]] = [[] for _ in definition.outputs]
    for values in outcome.per_call:
        if isinstance(values, ExecutionBlocker):
            for slot in outputs:
                slot.append(values)
            continue
        for i, value in enumerate(values):
            if isinstance(value, _ExpandedLink):
                outputs[i].extend(resolve(value[0], value[1]))
            elif definition.outputs[i].is_list:
                outputs[i].extend(value)
            else:
                outputs[i].append(value)
    return outputs
