"""Keeps loaded models resident under a memory budget, least recently used first out.

The manager knows nothing about torch: a loader returns any object and the caller says (or the
manager estimates through ``size_of``) how many bytes it holds.  Node packs build their model
objects through :meth:`ModelManager.get`, keyed by what identifies the weights (file path, mtime,
dtype, device), so the same file is loaded once and shared by every node that asks for it.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    value: Any
    size: int
    on_evict: Callable[[Any], None] | None


def default_size_of(obj: Any) -> int:
    """Bytes held by an object's tensors, found through ``size_bytes()``, ``parameters()`` or ``nbytes``."""
    fn = getattr(obj, "size_bytes", None)
    if callable(fn):
        return int(fn())
    params = getattr(obj, "parameters", None)
    if callable(params):
        try:
            return sum(p.numel() * p.element_size() for p in params())
        except Exception:  # pragma: no cover - exotic objects
            return 0
    return int(getattr(obj, "nbytes", 0))


class ModelManager:
    """An LRU cache of loaded models bounded by ``budget_bytes`` (None: unbounded)."""

    def __init__(self, budget_bytes: int | None = None, size_of: Callable[[Any], int] = default_size_of) -> None:
        self.budget_bytes = budget_bytes
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        self.hits = 0

    def get(self, key: Hashable, loader: Callable[[], Any], *, on_evict: Callable[[Any], None] | None = None) -> Any:
        """Return the cached object for ``key``, loading it with ``loader`` on a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.value
        value = loader()
        size = self._size_of(value)
        with self._lock:
            self.loads += 1
            self._entries[key] = _Entry(value, size, on_evict)
            self._entries.move_to_end(key)
            self._evict_over_budget(keep=key)
        log.info("loaded model %s (%.1f MB)", key, size / 2**20)
        return value

    def peek(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.value

    def _evict_over_budget(self, keep: Hashable) -> None:
        if self.budget_bytes is None:
            return
        while self.total_bytes > self.budget_bytes and len(self._entries) > 1:
            key, entry = next(iter(self._entries.items()))
            if key == keep:
                break
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        if entry.on_evict is not None:
            try:
                entry.on_evict(entry.value)
            except Exception:  # pragma: no cover
                log.exception("error while unloading %s", key)
        log.info("unloaded model %s", key)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    def unload_all(self) -> int:
        """Drop every model (``POST /free``); returns how many were unloaded."""
        with self._lock:
            keys = list(self._entries)
            for key in keys:
                self._drop(key)
            return len(keys)
