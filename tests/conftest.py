"""Test-wide settings: offline hubs, one torch thread, shared fixtures."""
from __future__ import annotations

import os

# Before anything imports torch: on 2 shared cores OpenMP spin-waiting makes tiny models 20x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from graph_runtime.paths import FolderPaths  # noqa: E402

pytest_plugins = ["tests.stub_nodes.fixtures", "tests.conftest_models", "tests.conftest_ray"]


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)


@pytest.fixture
def base_dir(tmp_path) -> FolderPaths:
    """An empty base directory (models/, input/, output/, temp/, user/)."""
    paths = FolderPaths(tmp_path / "base")
    paths.ensure_dirs()
    return paths


@pytest.fixture(scope="session")
def runtime_object_info(tmp_path_factory) -> dict:
    """object_info of the full built-in registry (the corpus conversion tests run against it too)."""
    from graph_runtime.node_info import object_info
    from graph_runtime.registry import build_registry
    from nodes import PACKS

    paths = FolderPaths(tmp_path_factory.mktemp("object-info-base"))
    return object_info(build_registry(PACKS), paths)
