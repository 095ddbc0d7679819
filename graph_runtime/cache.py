"""The output cache kept across prompts, keyed by ancestry-aware signatures.

A node's signature is a digest of its class, version, literal inputs, fingerprint and the
signatures of the nodes feeding it, computed once per node in topological order (O(1) work per
node, so long graphs cost linear time).  The same sub-graph under different node ids gets the
same signatures and hits the cache.  Entries are evicted least recently used first when the
estimated size of the cached outputs passes the memory budget.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


def estimate_bytes(value: Any, depth: int = 0) -> int:
    """A cheap estimate of the memory held by tensors/arrays/images inside an output value.

    Model handles are not counted: the model manager owns and budgets the weights.
    """
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if depth > 3:
        return 0
    if isinstance(value, dict):
        return sum(estimate_bytes(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(estimate_bytes(v, depth + 1) for v in value)
    if hasattr(value, "size") and hasattr(value, "mode") and hasattr(value, "getbands"):  # PIL image
        return value.size[0] * value.size[1] * len(value.getbands())
    embeds = getattr(value, "embeds", None)  # conditioning entries
    if embeds is not None:
        return estimate_bytes(embeds, depth + 1) + estimate_bytes(getattr(value, "options", None), depth + 1)
    return 0


@dataclass
class CacheEntry:
    outputs: list[list[Any]]
    ui: dict[str, list] | None
    size: int


class OutputCache:
    """LRU of node outputs by signature, bounded by ``budget_bytes`` and, optionally, ``max_entries``."""

    def __init__(self, budget_bytes: int = 2 << 30, max_entries: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, signature: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(signature)
            if entry is not None:
                self._entries.move_to_end(signature)
            return entry

    def __contains__(self, signature: str) -> bool:
        return signature in self._entries

    def put(self, signature: str, outputs: list[list[Any]], ui: dict[str, list] | None) -> None:
        size = sum(estimate_bytes(slot) for slot in outputs)
        if size > self.budget_bytes:
            return
        with self._lock:
            old = self._entries.pop(signature, None)
            if old is not None:
                self._total -= old.size
            self._entries[signature] = CacheEntry(outputs, ui, size)
            self._total += size
            while self._entries and (self._total > self.budget_bytes or
                                     (self.max_entries is not None and len(self._entries) > self.max_entries)):
                _, evicted = self._entries.popitem(last=False)
                self._total -= evicted.size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._total = 0

    @property
    def total_bytes(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._entries)


def canonical(value: Any) -> str:
    """A deterministic text form of a JSON-like literal for hashing."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{canonical(k)}:{canonical(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return f"{type(value).__name__}:{value!r}"


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
