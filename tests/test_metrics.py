"""``/metrics`` after a few prompts, read with prometheus_client's own parser: the counters and
histograms move by exactly what the prompts did."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from graph_runtime.context import NodeContext
from graph_runtime.schema import Int, Node, NodeResult, Output
from tests.stub_nodes import pack
from tests.web_harness import LiveServer, WsClient, make_registry, make_runtime


class FakeWeights:
    nbytes = 4096


class FakeModelLoader(Node):
    """Loads a 4 KiB "model" through the model manager (once; later calls hit the manager)."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = (Int("seed", 0, min=0, max=100),)
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, seed: int) -> NodeResult:
        ctx.models.get(("fake", "weights"), FakeWeights)
        return NodeResult((), {"value": [seed]})


class Add(Node):
    CATEGORY = "test"
    INPUTS = (Int("a", 0, min=0, max=100),)
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, a: int) -> tuple:
        return (a + 1,)


@pytest.fixture
def server(tmp_path: Path, calls: list[str]) -> Iterable[LiveServer]:
    registry = make_registry()
    registry.register(FakeModelLoader, "tests.test_metrics")
    live = LiveServer(make_runtime(tmp_path / "base", registry), probe_torch=False).start()
    yield live
    live.stop()


def scrape(server: LiveServer) -> dict[str, Any]:
    """``{sample name: {labels tuple: value}}`` from one scrape."""
    reply = server.get("/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def const(v: int) -> dict:
    return {"c": {"class_type": "StubConst", "inputs": {"value": v}},
            "o": {"class_type": "StubOutput", "inputs": {"value": ["c", 0]}}}


def test_counters_and_histograms_move_with_the_prompts(server: LiveServer) -> None:
    before = scrape(server)
    ws = WsClient(server.ws_url, client_id="watcher")
    try:
        ids = [server.queue(const(1), "watcher"), server.queue(const(2), "watcher")]
        ids.append(server.queue(const(1), "watcher"))  # the same prompt again: served from the cache
        failing = {"c": {"class_type": "StubConst", "inputs": {"value": 3}},
                   "f": {"class_type": "StubFail", "inputs": {"value": ["c", 0], "message": "nope"}},
                   "o": {"class_type": "StubOutput", "inputs": {"value": ["f", 0]}}}
        ids.append(server.queue(failing, "watcher"))
        ids.append(server.queue({"m": {"class_type": "FakeModelLoader", "inputs": {"seed": 1}}}, "watcher"))
        ids.append(server.queue({"m": {"class_type": "FakeModelLoader", "inputs": {"seed": 2}}}, "watcher"))
        assert server.post("/prompt", {"prompt": {"x": {"class_type": "Nope"}}}).status == 400
        for pid in ids:
            ws.wait_done(pid)
        after = scrape(server)
        assert value(after, "genesis_websocket_clients") == 1
    finally:
        ws.close()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("genesis_prompts_queued_total") == 6  # the invalid prompt was never queued
    assert moved("genesis_prompts_finished_total", status="success") == 5
    assert moved("genesis_prompts_finished_total", status="error") == 1
    assert moved("genesis_queue_wait_seconds_count") == 6 and moved("genesis_prompt_run_seconds_count") == 6
    assert moved("genesis_queue_wait_seconds_bucket", le="+Inf") == 6
    assert moved("genesis_prompt_run_seconds_sum") > 0
    # StubConst ran for values 1, 2, 3 (the repeat of 1 came from the cache); StubOutput for 1, 2
    assert moved("genesis_node_execution_seconds_count", class_type="StubConst") == 3
    assert moved("genesis_node_execution_seconds_count", class_type="StubOutput") == 2
    assert moved("genesis_node_execution_seconds_count", class_type="StubFail") == 0  # failed: no timing
    assert moved("genesis_cache_hits_total") >= 2  # both nodes of the repeated prompt
    assert moved("genesis_cache_misses_total") == 3 + 2 + 2
    assert moved("genesis_model_loads_total") == 1  # loaded once, then shared
    assert value(after, "genesis_model_memory_bytes", device="cpu") == 4096
    assert moved("genesis_model_load_seconds_total") > 0
    assert moved("genesis_http_requests_total", route="/prompt", method="POST", status="200") == 6
    assert moved("genesis_http_requests_total", route="/prompt", method="POST", status="400") == 1
    assert value(after, "genesis_prompts", state="pending") == 0 and value(after, "genesis_prompts", state="running") == 0


def test_queue_gauges_show_waiting_prompts(server: LiveServer) -> None:
    gate_prompt = {"c": {"class_type": "StubConst", "inputs": {"value": 1}},
                   "w": {"class_type": "StubWait", "inputs": {"value": ["c", 0], "gate": "metrics"}},
                   "o": {"class_type": "StubOutput", "inputs": {"value": ["w", 0]}}}
    ws = WsClient(server.ws_url, client_id="w")
    try:
        running = server.queue(gate_prompt, "w")
        ws.read_until(lambda m: isinstance(m, dict) and m["type"] == "executing" and m["data"]["node"] == "w")
        waiting = [server.queue(const(10 + i), "w") for i in range(3)]
        samples = scrape(server)
        assert value(samples, "genesis_prompts", state="running") == 1
        assert value(samples, "genesis_prompts", state="pending") == 3
        pack.GATES["metrics"].set()
        for pid in [running, *waiting]:
            ws.wait_done(pid)
    finally:
        ws.close()
