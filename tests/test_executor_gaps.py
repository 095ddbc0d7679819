"""One regression test per executor gap found when reading it (issue 8): ComfyUI V1 nodes whose
``IS_CHANGED`` is NaN, V1 node expansion, ``None`` for declared outputs, failing fingerprints,
and what the per-node memory figure means."""
from __future__ import annotations

import logging

import pytest

from graph_runtime.executor import Executor
from graph_runtime.registry import NodeRegistry
from graph_runtime.validation import PromptValidator
from tests.stub_nodes import differential as diff

RUNS: list[str] = []


class AlwaysChanged:
    """A V1 node whose IS_CHANGED says "always changed" the ComfyUI way: NaN."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    @classmethod
    def IS_CHANGED(cls, value):
        return float("nan")

    def run(self, value):
        RUNS.append("always")
        return (value,)


class BrokenFingerprint(AlwaysChanged):
    @classmethod
    def IS_CHANGED(cls, value):
        raise OSError("the watched file is unreadable")


class SameFingerprint(AlwaysChanged):
    @classmethod
    def IS_CHANGED(cls, value):
        return "unchanged"


class TripleByExpansion:
    """A V1 node that expands into a sub-graph built the way ComfyUI's GraphBuilder writes one."""

    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    def run(self, value):
        RUNS.append("expand")
        graph = {
            "c": {"class_type": "DConst", "inputs": {"value": value}},
            "twice": {"class_type": "DAdd", "inputs": {"a": ["c", 0], "b": ["c", 0], "k": 0}},
            "thrice": {"class_type": "DAdd", "inputs": {"a": ["twice", 0], "b": ["c", 0], "k": 0}},
        }
        return {"result": (["thrice", 0],), "expand": graph}


class ForgetsToReturn:
    CATEGORY = "testing"
    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    def run(self, value):
        return None


class V1Pack:
    NODE_CLASS_MAPPINGS = {"AlwaysChanged": AlwaysChanged, "BrokenFingerprint": BrokenFingerprint,
                           "SameFingerprint": SameFingerprint, "TripleByExpansion": TripleByExpansion,
                           "ForgetsToReturn": ForgetsToReturn}
    __name__ = "tests.v1_gap_pack"


@pytest.fixture
def setup(base_dir):
    registry = NodeRegistry()
    registry.register_module(diff, "tests.stub_nodes.differential")
    registry.register_module(V1Pack, "tests.v1_gap_pack")  # a module-like object with V1 mappings
    executor = Executor(registry, base_dir)
    validator = PromptValidator(registry, base_dir)
    RUNS.clear()

    def run(prompt):
        result = validator.validate(prompt)
        assert result.ok, result.summary()
        return executor.execute("p", result.prompt, result.outputs)

    yield run
    executor.close()


def shown(node: str, value_node: dict) -> dict:
    return {"src": value_node, node: {"class_type": "DOut", "inputs": {"value": ["src", 0]}}}


def test_is_changed_nan_reruns_every_time(setup):
    prompt = shown("o", {"class_type": "AlwaysChanged", "inputs": {"value": 3}})
    for _ in range(3):
        report = setup(prompt)
        assert report.ok and report.outputs["o"] == {"value": [3]}
    assert RUNS == ["always"] * 3


def test_a_constant_is_changed_caches(setup):
    prompt = shown("o", {"class_type": "SameFingerprint", "inputs": {"value": 3}})
    setup(prompt)
    setup(prompt)
    assert RUNS == ["always"]


def test_a_failing_fingerprint_is_logged_and_the_node_reruns(setup, caplog):
    prompt = shown("o", {"class_type": "BrokenFingerprint", "inputs": {"value": 3}})
    with caplog.at_level(logging.WARNING, logger="graph_runtime.signatures"):
        setup(prompt)
        setup(prompt)
    assert RUNS == ["always"] * 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("fingerprint of node src (BrokenFingerprint) failed" in m for m in messages)
    assert any("unreadable" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_v1_expansion_runs_the_subgraph(setup):
    prompt = {"c": {"class_type": "DConst", "inputs": {"value": 5}},
              "x": {"class_type": "TripleByExpansion", "inputs": {"value": ["c", 0]}},
              "o": {"class_type": "DOut", "inputs": {"value": ["x", 0]}}}
    report = setup(prompt)
    assert report.ok, report.error
    assert report.outputs["o"] == {"value": [15]}
    assert {"x.twice", "x.thrice"} <= set(report.executed)
    assert "x.c" not in report.executed  # the same signature as the prompt's own node "c": reused
    again = setup(prompt)  # cached: the expansion is not run again
    assert again.ok and again.outputs["o"] == {"value": [15]} and again.executed == []
    assert RUNS == ["expand"]


def test_returning_none_for_declared_outputs_is_an_error_naming_the_node(setup):
    prompt = shown("o", {"class_type": "ForgetsToReturn", "inputs": {"value": 1}})
    report = setup(prompt)
    assert report.status == "error"
    assert report.error["node_id"] == "src"
    message = report.error["exception_message"]
    assert "ForgetsToReturn (node src) returned nothing for its 2 declared output(s)" in message


HOG_SCRIPT = r"""
import json, sys, tempfile
from graph_runtime.executor import Executor
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.validation import PromptValidator
from tests.stub_nodes import differential as diff

class Hog:
    CATEGORY = "testing"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    kept = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mb": ("INT", {"default": 64})}}

    def run(self, mb):
        block = bytearray(mb << 20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        Hog.kept.append(block)
        return (mb,)

class Pack:
    NODE_CLASS_MAPPINGS = {"Hog": Hog}
    __name__ = "hog_pack"

registry = NodeRegistry()
registry.register_module(diff, "tests.stub_nodes.differential")
registry.register_module(Pack, "hog_pack")
executor = Executor(registry, FolderPaths(tempfile.mkdtemp()))
prompt = {"h": {"class_type": "Hog", "inputs": {"mb": 96}},
          "c": {"class_type": "DConst", "inputs": {"value": 1}},
          "o1": {"class_type": "DOut", "inputs": {"value": ["h", 0]}},
          "o2": {"class_type": "DOut", "inputs": {"value": ["c", 0]}}}
result = PromptValidator(registry).validate(prompt)
report = executor.execute("p", result.prompt, result.outputs)
print(json.dumps({"hog": report.node_runs["h"].memory, "const": report.node_runs["c"].memory,
                  "peak": report.process_peak_rss_bytes}))
"""


def test_node_memory_is_what_the_node_added_not_the_process_peak():
    """In a process of its own: other tests' threads freeing memory would blur the figures."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", HOG_SCRIPT], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    hog = figures["hog"]["rss_delta_bytes"]
    const = figures["const"]["rss_delta_bytes"]
    assert 90 << 20 <= hog <= 120 << 20, hog
    assert abs(const) < 8 << 20, const
    assert figures["peak"] >= hog
