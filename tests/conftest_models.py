"""pytest plugin: the tiny model set, built once per test session and shared by every test.

Register from ``tests/conftest.py`` with ``pytest_plugins = [..., "tests.conftest_models"]``.

* ``tiny_models_dir`` (session): a ``models/`` directory holding everything
  :func:`models.tools.tiny_models.write_tiny_models` writes (≈2 s to build). Treat it as read-only.
* ``tiny_base_dir`` (per test): a fresh ComfyUI base directory (``models/``, ``input/``, ``output/``,
  ``temp/``, ``user/``) whose model files are hard links to ``tiny_models_dir``'s; a test may add or
  remove entries in its own ``models/<folder>/`` without touching the shared set.
* ``tiny_paths`` (per test): :class:`FolderPaths` of ``tiny_base_dir``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from graph_runtime.paths import FolderPaths


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.tools.tiny_models import write_tiny_models

    models = tmp_path_factory.mktemp("tiny-models") / "models"
    write_tiny_models(models)
    return models


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def link_models(shared: Path, models: Path) -> None:
    """Mirror ``shared`` under ``models`` with hard links (cheap, and removable per test).

    Not symlinks: the runtime refuses model paths that resolve outside their folder.
    """
    shutil.copytree(shared, models, copy_function=_link_or_copy, dirs_exist_ok=True)


@pytest.fixture
def tiny_base_dir(tmp_path: Path, tiny_models_dir: Path) -> Path:
    base = tmp_path / "tiny-base"
    link_models(tiny_models_dir, base / "models")
    FolderPaths(base).ensure_dirs()
    return base


@pytest.fixture
def tiny_paths(tiny_base_dir: Path) -> FolderPaths:
    return FolderPaths(tiny_base_dir)
