"""Run, then Run again: the default SD1.5 workflow on the tiny models, as a user presses Run.

The canvas's seed widget is on "randomize", so the second Run differs only in the KSampler seed;
then the user edits the prompt text, then presses Run with nothing changed.  Every Run must
give an image, and only what changed may execute again (the checkpoint is loaded once).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from graph_runtime.executor import Executor
from graph_runtime.node_info import object_info
from graph_runtime.registry import build_registry
from nodes import PACKS
from graph_runtime.validation import PromptValidator
from graph_runtime.workflow_files.ui_to_api import convert_ui_to_api

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "default_sd15.json"


@pytest.fixture(scope="module")
def registry():
    return build_registry(PACKS)


def default_prompt(registry, paths) -> dict:
    prompt = convert_ui_to_api(json.loads(WORKFLOW.read_text()), object_info(registry, paths))
    for node in prompt.values():  # keep the tiny run quick
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    return prompt


def node_of(prompt: dict, class_type: str, title_hint: str | None = None) -> str:
    return next(nid for nid, n in prompt.items() if n["class_type"] == class_type)


def test_run_again_with_a_new_seed_then_new_text_then_unchanged(registry, tiny_paths):
    executor = Executor(registry, tiny_paths)
    validator = PromptValidator(registry, tiny_paths)
    prompt = default_prompt(registry, tiny_paths)
    sampler = node_of(prompt, "KSampler")
    loader = node_of(prompt, "CheckpointLoaderSimple")
    encoders = [nid for nid, n in prompt.items() if n["class_type"] == "CLIPTextEncode"]

    def run(p: dict, prompt_id: str):
        result = validator.validate(copy.deepcopy(p))
        assert result.ok, result.summary()
        report = executor.execute(prompt_id, result.prompt, result.outputs)
        assert report.ok, report.error
        images = [img for ui in report.outputs.values() for img in ui.get("images", [])]
        assert len(images) == 1, report.outputs
        return report

    first = run(prompt, "first")
    assert loader in first.executed

    prompt[sampler]["inputs"]["seed"] += 12345  # "randomize" after the first Run
    second = run(prompt, "seed")
    assert loader not in second.executed and not set(encoders) & set(second.executed)
    assert sampler in second.executed

    prompt[encoders[0]]["inputs"]["text"] = "a lighthouse at dusk, oil painting"
    third = run(prompt, "text")
    assert encoders[0] in third.executed and loader not in third.executed
    assert sampler in third.executed

    fourth = run(prompt, "unchanged")
    assert fourth.executed == []

    prompt[sampler]["inputs"]["seed"] += 1  # and once more after a fully cached Run
    fifth = run(prompt, "seed-again")
    assert fifth.executed and loader not in fifth.executed
