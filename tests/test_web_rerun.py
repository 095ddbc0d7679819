"""The web path of issue 8: sequences of partly changed prompts posted over HTTP to a live server
on the tiny models all succeed, each with its image, whatever subset of inputs changed."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph_runtime.paths import FolderPaths
from graph_runtime.registry import build_registry
from nodes import PACKS
from graph_runtime.service import Runtime
from graph_runtime.workflow_files.ui_to_api import convert_ui_to_api
from tests.conftest_models import link_models
from tests.web_harness import LiveServer

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "default_sd15.json"


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterable[LiveServer]:
    base = tmp_path_factory.mktemp("web-rerun") / "base"
    link_models(tiny_models_dir, base / "models")
    paths = FolderPaths(base)
    paths.ensure_dirs()
    live = LiveServer(Runtime(paths, registry=build_registry(PACKS)), probe_torch=False).start()  # starts the worker
    yield live
    live.stop()


@pytest.fixture(scope="module")
def base_prompt(server: LiveServer) -> dict[str, Any]:
    prompt = convert_ui_to_api(json.loads(WORKFLOW.read_text()), server.get("/object_info").json())
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    return prompt


def _node(prompt: dict, class_type: str, index: int = 0) -> dict:
    return [n for n in prompt.values() if n["class_type"] == class_type][index]


CHANGES = {
    "seed": lambda p, v: _node(p, "KSampler")["inputs"].update(seed=v),
    "positive": lambda p, v: _node(p, "CLIPTextEncode", 0)["inputs"].update(text=f"a red fox, take {v}"),
    "negative": lambda p, v: _node(p, "CLIPTextEncode", 1)["inputs"].update(text=f"blurry {v}"),
    "cfg": lambda p, v: _node(p, "KSampler")["inputs"].update(cfg=1.0 + v % 7),
    "size": lambda p, v: _node(p, "EmptyLatentImage")["inputs"].update(width=64 + 8 * (v % 2),
                                                                      height=64 + 8 * (v % 3 == 0)),
    "sampler": lambda p, v: _node(p, "KSampler")["inputs"].update(
        sampler_name=["euler", "euler_ancestral", "dpmpp_2m"][v % 3]),
    "prefix": lambda p, v: _node(p, "SaveImage")["inputs"].update(filename_prefix=f"seq{v % 2}"),
}


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sets(st.sampled_from(sorted(CHANGES)), max_size=3), st.integers(0, 2**31)),
                min_size=2, max_size=4))
def test_sequences_of_partly_changed_prompts_all_succeed(server: LiveServer, base_prompt: dict, steps) -> None:
    prompt = copy.deepcopy(base_prompt)
    for changed, value in steps:  # an empty set resubmits the same prompt
        for name in sorted(changed):
            CHANGES[name](prompt, value)
        prompt_id = server.queue(copy.deepcopy(prompt))
        entry = server.wait_history(prompt_id, timeout=120)
        assert entry["status"]["status_str"] == "success", (changed, entry["status"]["messages"][-1])
        images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
        assert len(images) == 1
        assert server.get(f"/view?filename={images[0]['filename']}&type=output").status == 200
