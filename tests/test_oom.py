"""Out of memory inside a node: the manager frees what the node does not use and the node runs once more.

A test node loads its own model through the manager, then raises ``torch.OutOfMemoryError`` (the
class torch raises for CUDA) a given number of times.  Another model loaded earlier by the prompt is
what a retry must free.
"""
from __future__ import annotations

import pytest
import torch

from graph_runtime.context import NodeContext
from graph_runtime.executor import Executor
from graph_runtime.model_manager import (ModelManager, ModelMemoryError, PLAIN_OPS, is_out_of_memory,
                                         out_of_memory_message)
from graph_runtime.registry import build_registry
from graph_runtime.schema import Int, Node, Output, Socket, String
from graph_runtime.validation import PromptValidator

FAILURES: dict[str, int] = {}


class Blob:
    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def size_bytes(self) -> int:
        return len(self.data)


class LoadBlob(Node):
    """Loads a named blob model through the manager (its output holds the handle)."""

    CATEGORY = "test"
    INPUTS = (String("name", "a"),)
    OUTPUTS = (Output("BLOB"),)

    def execute(self, ctx: NodeContext, name: str):
        return (ctx.models.load(("blob", name), lambda: Blob(1 << 20), ops=PLAIN_OPS, label=name),)


class HungryNode(Node):
    """Uses a blob, and fails with torch.OutOfMemoryError ``fail_times`` times before succeeding."""

    CATEGORY = "test"
    INPUTS = (Socket("blob", "BLOB"), Int("fail_times", 1, min=0, max=5), String("key", "k"))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, blob, fail_times: int, key: str):
        value = blob.get()
        count = FAILURES.get(key, 0)
        if count < fail_times:
            FAILURES[key] = count + 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return (len(value.data),)


class Show(Node):
    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = (Socket("value", "INT"), Socket("other", "BLOB"))
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, value, other):
        return ()


@pytest.fixture
def executor(base_dir):
    registry = build_registry(packs=["nodes.primitives"])
    for cls in (LoadBlob, HungryNode, Show):
        registry.register(cls, "tests.test_oom")
    FAILURES.clear()
    ex = Executor(registry, base_dir, models=ModelManager())
    yield ex
    ex.close()


def run(executor: Executor, fail_times: int, key: str):
    prompt = {"1": {"class_type": "LoadBlob", "inputs": {"name": "other"}},
              "2": {"class_type": "LoadBlob", "inputs": {"name": "mine"}},
              "3": {"class_type": "HungryNode", "inputs": {"blob": ["2", 0], "fail_times": fail_times, "key": key}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0], "other": ["1", 0]}}}
    result = PromptValidator(executor.registry, executor.paths).validate(prompt)
    assert result.ok, result.node_errors
    return executor.execute(key, result.prompt, result.outputs)


def test_one_out_of_memory_is_retried_after_freeing_other_models(executor):
    report = run(executor, 1, "once")
    assert report.status == "success", report.error
    assert FAILURES["once"] == 1
    labels = [m.label for m in executor.models.loaded_models()]
    assert "mine" in labels and "other" not in labels  # the retry unloaded what the node did not use


def test_a_second_out_of_memory_gives_the_clear_error(executor):
    report = run(executor, 2, "twice")
    assert report.status == "error"
    message = report.error["exception_message"]
    assert "HungryNode (node 3) ran out of memory" in message
    assert "smaller image size or batch" in message and "--lowvram" in message and "quantized model" in message
    assert FAILURES["twice"] == 2  # tried exactly twice


def test_the_predicate_recognises_allocator_errors_without_torch():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ModelMemoryError("no room"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert "--lowvram" in out_of_memory_message("KSampler", "3", RuntimeError("x"), [])
