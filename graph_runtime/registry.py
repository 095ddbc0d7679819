"""The set of node classes one runtime knows: built-in packs plus ``custom_nodes/``.

A registry is an ordinary object built at start-up (no module-level state), so tests can
build one with a stub pack.  A pack that fails to import is logged with its traceback and
skipped: one broken custom node never stops the server.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Iterable, Iterator

from graph_runtime.comfy_v1 import adapt_v1_class
from graph_runtime.schema import Node, NodeDefinition, define

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackFailure:
    """A node pack that could not be imported."""

    name: str
    error: str
    traceback: str


@dataclass
class NodeRegistry:
    definitions: dict[str, NodeDefinition] = field(default_factory=dict)
    failures: list[PackFailure] = field(default_factory=list)
    web_directories: dict[str, Path] = field(default_factory=dict)

    # -- lookups ----------------------------------------------------------------------------
    def get(self, class_type: str) -> NodeDefinition | None:
        return self.definitions.get(class_type)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self.definitions

    def __iter__(self) -> Iterator[NodeDefinition]:
        return iter(self.definitions.values())

    def __len__(self) -> int:
        return len(self.definitions)

    # -- registration ---------------------------------------------------------------------
    def register(self, node_class: type, python_module: str = "nodes", *, replace: bool = False) -> NodeDefinition:
        definition = define(node_class, python_module)
        if definition.class_type in self.definitions and not replace:
            raise ValueError(f"node class {definition.class_type!r} is already registered "
                             f"(by {self.definitions[definition.class_type].python_module})")
        self.definitions[definition.class_type] = definition
        return definition

    def register_module(self, module: ModuleType, python_module: str | None = None) -> list[str]:
        """Register every :class:`Node` subclass defined in ``module`` and its ComfyUI V1 mappings.

        A shared base class sets ``ABSTRACT = True`` in its own body to stay out; its subclasses
        are registered (the marker is not inherited).
        """
        python_module = python_module or module.__name__
        added: list[str] = []
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Node) and obj is not Node and obj.__module__ == module.__name__ \
                    and not inspect.isabstract(obj) and not obj.__dict__.get("ABSTRACT", False):
                added.append(self.register(obj, python_module).class_type)
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None) or {}
        display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
        for class_type, cls in mappings.items():
            if class_type in self.definitions:
                log.warning("%s: node %s already exists; the built-in one is kept", python_module, class_type)
                continue
            adapted = adapt_v1_class(class_type, cls, display.get(class_type))
            added.append(self.register(adapted, python_module).class_type)
        return added

    def load_pack(self, module_name: str) -> None:
        try:
            module = importlib.import_module(module_name)
            self.register_module(module)
        except Exception as exc:  # a broken pack must not stop start-up
            self._fail(module_name, exc)

    def load_custom_nodes(self, directories: Iterable[Path]) -> None:
        """Import each ``.py`` file or package in the custom node directories (ComfyUI layout)."""
        for directory in directories:
            if not directory.is_dir():
                continue
            for entry in sorted(directory.iterdir()):
                if entry.name.startswith((".", "__")) or entry.name.endswith(".disabled"):
                    continue
                if entry.is_file() and entry.suffix != ".py":
                    continue
                if entry.is_dir() and not (entry / "__init__.py").exists():
                    continue
                self._load_custom_pack(entry)

    def _load_custom_pack(self, path: Path) -> None:
        name = f"custom_nodes.{path.stem if path.is_file() else path.name}"
        try:
            init = path if path.is_file() else path / "__init__.py"
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=None if path.is_file() else [str(path)])
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            self.register_module(module, name)
            web_dir = getattr(module, "WEB_DIRECTORY", None)
            if web_dir:
                self.web_directories[path.name] = (path if path.is_dir() else path.parent) / web_dir
            log.info("loaded custom node pack %s", path.name)
        except Exception as exc:
            sys.modules.pop(name, None)
            self._fail(name, exc)

    def _fail(self, name: str, exc: BaseException) -> None:
        tb = traceback.format_exc()
        log.error("could not load node pack %s; skipped:\n%s", name, tb)
        self.failures.append(PackFailure(name, f"{type(exc).__name__}: {exc}", tb))


def build_registry(packs: Iterable[str], custom_dirs: Iterable[Path] = ()) -> NodeRegistry:
    """A registry of the given pack modules plus custom node directories.

    The list of packs is the caller's choice: the composition root (``server.py``) passes the
    built-in ``nodes.PACKS``; graph_runtime itself never imports ``nodes``.
    """
    registry = NodeRegistry()
    for module_name in packs:
        registry.load_pack(module_name)
    registry.load_custom_nodes(custom_dirs)
    return registry
