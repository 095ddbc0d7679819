"""Normalised view of a UI-format graph (the root graph or one subgraph definition).

UI workflows come in several shapes: version 0.4 stores links as 6-arrays
``[id, origin_id, origin_slot, target_id, target_slot, type]``; version 1.0 and every subgraph
definition store objects ``{id, origin_id, origin_slot, target_id, target_slot, type}``.  Node ids
are ints at the root and may be strings elsewhere.  Everything is keyed by ``str(id)`` here so the
converter never has to care.

Note that ``target_slot`` is *not* trustworthy: the frontend removes unconnected widget input
slots before saving (``compressWidgetInputSlots``) and rewrites some but not all slot indices.
The converter therefore finds a link's target through the node input whose ``link`` names it;
``origin_slot`` (an output index) is reliable because outputs are never compressed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from graph_runtime.workflow_files.errors import WorkflowFormatError

SUBGRAPH_INPUT_NODE = "-10"
SUBGRAPH_OUTPUT_NODE = "-20"


@dataclass(frozen=True)
class Link:
    id: str
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: str | None


@dataclass
class Graph:
    """Nodes and links of one graph level, plus the subgraph IO when it is a definition."""

    name: str
    nodes: dict[str, dict[str, Any]]
    links: dict[str, Link]
    order: list[str]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def links_from_input(self, slot: int) -> list[Link]:
        """Links leaving subgraph input ``slot`` (through the ``-10`` IO node)."""
        ids = self.inputs[slot].get("linkIds") if slot < len(self.inputs) else None
        found = [self.links[str(i)] for i in ids or () if str(i) in self.links]
        if not found:
            found = [l for l in self.links.values()
                     if l.origin_id == SUBGRAPH_INPUT_NODE and l.origin_slot == slot]
        return found

    def link_into_output(self, slot: int) -> Link | None:
        """The link feeding subgraph output ``slot`` (into the ``-20`` IO node), if any."""
        ids = self.outputs[slot].get("linkIds") if slot < len(self.outputs) else None
        for i in ids or ():
            link = self.links.get(str(i))
            if link is not None:
                return link
        for link in self.links.values():
            if link.target_id == SUBGRAPH_OUTPUT_NODE and link.target_slot == slot:
                return link
        return None


def _int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WorkflowFormatError(f"{what} must be an integer, got {value!r}") from None


def parse_link(raw: Any, where: str) -> Link:
    """Parse one link in array or object form."""
    if isinstance(raw, (list, tuple)):
        if len(raw) < 5:
            raise WorkflowFormatError(f"{where}: link {raw!r} must have at least 5 entries")
        lid, oid, oslot, tid, tslot = raw[:5]
        ltype = raw[5] if len(raw) > 5 else None
    elif isinstance(raw, Mapping):
        try:
            lid, oid, oslot = raw["id"], raw["origin_id"], raw["origin_slot"]
            tid, tslot = raw["target_id"], raw["target_slot"]
        except KeyError as exc:
            raise WorkflowFormatError(f"{where}: link {raw!r} lacks {exc.args[0]!r}") from None
        ltype = raw.get("type")
    else:
        raise WorkflowFormatError(f"{where}: link {raw!r} is neither an array nor an object")
    return Link(id=str(lid), origin_id=str(oid), origin_slot=_int(oslot, f"{where}: link {lid} origin_slot"),
                target_id=str(tid), target_slot=_int(tslot, f"{where}: link {lid} target_slot"),
                type=ltype if isinstance(ltype, str) or ltype is None else str(ltype))


def parse_graph(raw: Mapping[str, Any], name: str) -> Graph:
    """Parse a root workflow or a subgraph definition; raises :class:`WorkflowFormatError`."""
    nodes_raw = raw.get("nodes")
    if not isinstance(nodes_raw, list):
        raise WorkflowFormatError(f"{name}: 'nodes' must be a list")
    nodes: dict[str, dict[str, Any]] = {}
    for index, node in enumerate(nodes_raw):
        if not isinstance(node, Mapping) or "id" not in node:
            raise WorkflowFormatError(f"{name}: node #{index} has no 'id'")
        if not isinstance(node.get("type"), str):
            raise WorkflowFormatError(f"{name}: node {node['id']} has no 'type'")
        key = str(node["id"])
        if key in nodes:
            raise WorkflowFormatError(f"{name}: duplicate node id {key}")
        nodes[key] = dict(node)
    links_raw = raw.get("links") or []
    if isinstance(links_raw, Mapping):
        links_raw = list(links_raw.values())
    if not isinstance(links_raw, list):
        raise WorkflowFormatError(f"{name}: 'links' must be a list")
    links: dict[str, Link] = {}
    for entry in links_raw:
        if entry is None:  # litegraph leaves holes for deleted links in some versions
            continue
        link = parse_link(entry, name)
        links[link.id] = link
    order = sorted(nodes, key=lambda k: (_order_key(nodes[k]), list(nodes).index(k)))
    ios = {}
    for key in ("inputs", "outputs"):
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise WorkflowFormatError(f"{name}: subgraph '{key}' must be a list of objects")
        ios[key] = [dict(v) for v in value]
    return Graph(name=name, nodes=nodes, links=links, order=order, inputs=ios["inputs"], outputs=ios["outputs"])


def _order_key(node: Mapping[str, Any]) -> float:
    order = node.get("order")
    return float(order) if isinstance(order, (int, float)) else float("inf")


def subgraph_definitions(workflow: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``definitions.subgraphs`` keyed by id (the ``type`` of their instance nodes).

    Definitions normally all sit at the root; definitions nested inside a subgraph's own
    ``definitions`` are collected too (the first one seen wins for a repeated id).
    """
    result: dict[str, Mapping[str, Any]] = {}
    pending: list[Mapping[str, Any]] = [workflow]
    while pending:
        holder = pending.pop(0)
        definitions = holder.get("definitions") or {}
        if not isinstance(definitions, Mapping):
            raise WorkflowFormatError("'definitions' must be an object")
        subgraphs = definitions.get("subgraphs") or []
        if not isinstance(subgraphs, list):
            raise WorkflowFormatError("'definitions.subgraphs' must be a list")
        for index, sub in enumerate(subgraphs):
            if not isinstance(sub, Mapping) or not isinstance(sub.get("id"), str):
                raise WorkflowFormatError(f"subgraph definition #{index} has no string 'id'")
            if not isinstance(sub.get("nodes"), list):
                raise WorkflowFormatError(f"subgraph {sub['id']} has no 'nodes' list")
            if sub["id"] not in result:
                result[sub["id"]] = sub
                pending.append(sub)
    return result
