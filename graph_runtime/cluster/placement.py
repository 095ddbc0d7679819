"""What a prompt needs from a worker, read from its graph: model ids and where it may run.

Model ids are ``"<folder>/<name>"`` (``"checkpoints/sd15.safetensors"``): the value of every
input declared as a model-folder combo (``Combo(..., FileList("checkpoints"))``), so they are
known before anything runs and are the same on every machine whatever the mount point of the
model folder.  A worker reports the same ids for what it holds by mapping its loaded models'
source files back through its own folders (:func:`model_ids_of_files`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from graph_runtime.paths import DIRECTORY_FOLDERS, FOLDER_ALIASES, FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.schema import FileList, Resource


def model_id(folder: str, name: str) -> str:
    """The id of model ``name`` in model folder ``folder`` (folder aliases folded: clip → text_encoders)."""
    return f"{FOLDER_ALIASES.get(folder, folder)}/{name.replace(chr(92), '/')}"


def prompt_model_ids(prompt: dict[str, Any], registry: NodeRegistry) -> frozenset[str]:
    """Ids of the models a prompt's loader nodes name (its literal model-folder combo inputs)."""
    ids: set[str] = set()
    for node in prompt.values():
        if not isinstance(node, dict):
            continue
        definition = registry.get(node.get("class_type"))
        if definition is None:
            continue
        for name, value in (node.get("inputs") or {}).items():
            spec = definition.input_map.get(name)
            if spec is None or not isinstance(spec.options, FileList) or spec.options.folder == "input":
                continue
            if isinstance(value, str) and value:
                ids.add(model_id(spec.options.folder, value))
    return frozenset(ids)


def model_ids_of_files(paths: FolderPaths, files: Iterable[str]) -> frozenset[str]:
    """Ids of model files (or files inside model directories) found under ``paths``' model folders."""
    roots = [(folder, os.path.abspath(root)) for folder, dirs in paths.folders.items() for root in dirs]
    ids: set[str] = set()
    for file in files:
        absolute = os.path.abspath(file)
        candidates = {absolute}
        try:
            candidates.add(str(Path(absolute).resolve()))
        except OSError:  # pragma: no cover - unreadable path
            pass
        for folder, root in roots:
            for candidate in candidates:
                if not candidate.startswith(root + os.sep):
                    continue
                relative = candidate[len(root) + 1:].replace(os.sep, "/")
                if folder in DIRECTORY_FOLDERS:
                    relative = relative.split("/", 1)[0]
                ids.add(model_id(folder, relative))
    return frozenset(ids)


def runs_in_server(prompt: dict[str, Any], registry: NodeRegistry) -> bool:
    """True for prompts that wait on the network and need no GPU (video-provider prompts).

    They run in the server process's own lane and never take a GPU worker; a prompt that mixes
    GPU nodes and network nodes runs on a GPU worker.
    """
    network = False
    for node in prompt.values():
        definition = registry.get(node.get("class_type")) if isinstance(node, dict) else None
        if definition is None:
            continue
        if definition.resource is Resource.GPU:
            return False
        network = network or definition.resource is Resource.NETWORK
    return network
