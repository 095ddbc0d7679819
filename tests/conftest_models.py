"""pytest plugin: the tiny model set, built once per test session and shared by every test.

Register from ``tests/conftest.py`` with ``pytest_plugins = [..., "tests.conftest_models"]``.

* ``tiny_models_dir`` (session): a ``models/`` directory holding everything
  :func:`models.tools.tiny_models.write_tiny_models` writes (≈2 s to build). Treat it as read-only.
* ``tiny_base_dir`` (per test): a fresh ComfyUI base directory (``models/``, ``input/``, ``output/``,
  ``temp/``, ``user/``) whose model files are symlinks into ``tiny_models_dir``; a test may add or
  remove entries in its own ``models/<folder>/`` without touching the shared set.
* ``tiny_paths`` (per test): :class:`FolderPaths` of ``tiny_base_dir``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from graph_runtime.paths import FolderPaths


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.tools.tiny_models import write_tiny_models

    models = tmp_path_factory.mktemp("tiny-models") / "models"
    write_tiny_models(models)
    return models


def link_models(shared: Path, models: Path) -> None:
    """Mirror ``shared``'s folders under ``models`` with one symlink per entry."""
    for folder in shared.iterdir():
        if not folder.is_dir():
            continue
        target = models / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for entry in folder.iterdir():
            os.symlink(entry, target / entry.name, target_is_directory=entry.is_dir())


@pytest.fixture
def tiny_base_dir(tmp_path: Path, tiny_models_dir: Path) -> Path:
    base = tmp_path / "tiny-base"
    link_models(tiny_models_dir, base / "models")
    FolderPaths(base).ensure_dirs()
    return base


@pytest.fixture
def tiny_paths(tiny_base_dir: Path) -> FolderPaths:
    return FolderPaths(tiny_base_dir)
