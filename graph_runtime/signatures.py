"""Cache signatures of a prompt's nodes, computed once per node in topological order.

A node's signature is a digest of its class, version, literal inputs, fingerprint and the
signatures of the nodes feeding it, so the same sub-graph under other node ids gets the same
signatures, and changing a literal changes exactly the signatures downstream of it.  Each node
costs O(its inputs), so long graphs cost linear time (no recursion, no re-hashing of ancestors).

A node never reuses a result when its signature carries a nonce: volatile nodes, nodes whose
fingerprint is NaN (ComfyUI's ``IS_CHANGED`` convention for "always changed": NaN equals nothing,
not even itself), and nodes whose fingerprint raised (logged, since a silently failing
fingerprint would otherwise look like a node that never caches).
"""
from __future__ import annotations

import inspect
import logging
import math
import uuid
from collections import deque
from typing import Any, Iterable, Mapping

from graph_runtime.cache import canonical, digest
from graph_runtime.schema import CachePolicy, NodeDefinition
from graph_runtime.validation import is_link

log = logging.getLogger(__name__)


def topological_order(prompt: Mapping[str, dict[str, Any]], nodes: Iterable[str] | None = None) -> list[str]:
    """``nodes`` (default: all) ordered so each comes after the nodes among them that feed it."""
    members = list(prompt if nodes is None else nodes)
    member_set = set(members)
    indegree = {nid: 0 for nid in members}
    consumers: dict[str, list[str]] = {nid: [] for nid in members}
    for nid in members:
        for value in prompt[nid].get("inputs", {}).values():
            if is_link(value) and value[0] in member_set:
                indegree[nid] += 1
                consumers[value[0]].append(nid)
    queue = deque(n for n in members if indegree[n] == 0)
    order: list[str] = []
    while queue:
        nid = queue.popleft()
        order.append(nid)
        for consumer in consumers[nid]:
            indegree[consumer] -= 1
            if indegree[consumer] == 0:
                queue.append(consumer)
    if len(order) != len(members):  # validation rejects cycles; stay total anyway
        placed = set(order)
        order.extend(n for n in members if n not in placed)
    return order


def _contains_nan(value: Any, depth: int = 0) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if depth < 4 and isinstance(value, (list, tuple)):
        return any(_contains_nan(v, depth + 1) for v in value)
    if depth < 4 and isinstance(value, dict):
        return any(_contains_nan(v, depth + 1) for v in value.values())
    return False


def _accepts_paths(definition: NodeDefinition) -> bool:
    return "paths" in inspect.signature(definition.node_class.fingerprint).parameters


def node_signature(node_id: str, node: dict[str, Any], definition: NodeDefinition, input_signatures: Mapping[str, str],
                   paths: Any = None) -> str:
    """The signature of one node, given the signatures already computed for the nodes it links to."""
    inputs = node.get("inputs", {})
    parts = [definition.class_type, definition.version]
    literals: dict[str, Any] = {}
    for name in sorted(inputs):
        value = inputs[name]
        if is_link(value):
            parts.append(f"{name}=>{input_signatures.get(value[0])}#{int(value[1])}")
        elif name in definition.input_map:
            literals[name] = value
            parts.append(f"{name}={canonical(value)}")
    if definition.uses_unique_id:
        parts.append(f"id={node_id}")
    if definition.cache is CachePolicy.VOLATILE:
        parts.append(f"nonce={uuid.uuid4().hex}")
    if definition.has_fingerprint:
        kwargs = {"paths": paths} if _accepts_paths(definition) else {}
        try:
            fingerprint = definition.node_class.fingerprint(**literals, **kwargs)
        except Exception:
            log.warning("fingerprint of node %s (%s) failed; it will run every time", node_id,
                        definition.class_type, exc_info=True)
            parts.append(f"fingerprint-failed={uuid.uuid4().hex}")
        else:
            if _contains_nan(fingerprint):
                parts.append(f"always-changed={uuid.uuid4().hex}")
            else:
                parts.append(f"fp={canonical(fingerprint)}")
    return digest("|".join(parts))


def compute_signatures(prompt: Mapping[str, dict[str, Any]], definitions: Mapping[str, NodeDefinition],
                       known: dict[str, str], nodes: Iterable[str] | None = None, paths: Any = None) -> dict[str, str]:
    """Add the signatures of ``nodes`` (default: all) to ``known`` and return it.

    Links to nodes outside ``nodes`` use the signatures already in ``known``.
    """
    for node_id in topological_order(prompt, nodes):
        known[node_id] = node_signature(node_id, prompt[node_id], definitions[node_id], known, paths)
    return known
