"""Fixtures giving a registry and executor over the stub pack plus the built-in non-ML nodes."""
from __future__ import annotations

import pytest

from graph_runtime.executor import Executor
from graph_runtime.registry import NodeRegistry, build_registry
from tests.stub_nodes import pack


@pytest.fixture
def stub_registry() -> NodeRegistry:
    registry = build_registry(packs=["nodes.primitives", "nodes.image"])
    registry.register_module(pack, "tests.stub_nodes.pack")
    return registry


@pytest.fixture
def calls() -> list[str]:
    pack.CALLS.clear()
    pack.GATES.clear()
    yield pack.CALLS
    for gate in pack.GATES.values():
        gate.set()


@pytest.fixture
def executor(stub_registry, base_dir) -> Executor:
    ex = Executor(stub_registry, base_dir)
    yield ex
    ex.close()
