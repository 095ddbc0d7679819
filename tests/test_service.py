"""The runtime service in-process: queue order, front, interrupt by prompt id, cancel, history, UI workflows."""
from __future__ import annotations

import threading

import pytest

from graph_runtime.events import ExecutionInterrupted, Progress
from graph_runtime.jobs import JobStatus
from graph_runtime.service import Runtime
from tests.stub_nodes import pack


@pytest.fixture
def runtime(stub_registry, base_dir, calls):
    rt = Runtime(base_dir, registry=stub_registry)
    yield rt
    for gate in pack.GATES.values():
        gate.set()
    rt.stop()


def waiting_prompt(gate: str, value: int) -> dict:
    return {"c": {"class_type": "StubConst", "inputs": {"value": value}},
            "w": {"class_type": "StubWait", "inputs": {"value": ["c", 0], "gate": gate}},
            "o": {"class_type": "StubOutput", "inputs": {"value": ["w", 0]}}}


def const_prompt(value: int) -> dict:
    return {"c": {"class_type": "StubConst", "inputs": {"value": value}},
            "o": {"class_type": "StubOutput", "inputs": {"value": ["c", 0]}}}


def test_queue_runs_in_order_with_front_first_and_records_history(runtime, calls):
    started = threading.Event()
    runtime.add_listener(lambda e, c: started.set() if isinstance(e, Progress) else None)
    blocker = runtime.submit(waiting_prompt("g1", 1), client_id="me")
    runtime.start()
    assert started.wait(10)
    a = runtime.submit(const_prompt(10))
    b = runtime.submit(const_prompt(20))
    first = runtime.submit(const_prompt(30), front=True)
    assert [j.prompt_id for j in runtime.store.pending()] == [first.prompt_id, a.prompt_id, b.prompt_id]
    pack.GATES["g1"].set()
    assert runtime.wait_idle(20)
    order = [runtime.store.get(p.prompt_id).finished_at for p in (blocker, first, a, b)]
    assert order == sorted(order)
    entry = runtime.store.get(a.prompt_id).history_entry()
    assert entry["status"] == {"status_str": "success", "completed": True, "messages": entry["status"]["messages"]}
    assert entry["outputs"] == {"o": {"value": [10]}}
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert runtime.store.get(blocker.prompt_id).extra_data["client_id"] == "me"


def test_interrupt_by_prompt_id_only_stops_that_prompt(runtime, calls):
    events = []
    started = threading.Event()

    def listen(event, client):
        events.append(event)
        if isinstance(event, Progress):
            started.set()

    runtime.add_listener(listen)
    running = runtime.submit(waiting_prompt("g2", 1))
    runtime.start()
    assert started.wait(10)
    assert runtime.interrupt("some-other-prompt") is False
    assert runtime.interrupt(running.prompt_id) is True
    assert runtime.wait_idle(20)
    job = runtime.store.get(running.prompt_id)
    assert job.status is JobStatus.INTERRUPTED
    assert job.history_entry()["status"]["status_str"] == "error"
    assert any(isinstance(e, ExecutionInterrupted) for e in events)


def test_cancel_pending_and_invalid_prompts_are_not_queued(runtime, calls):
    a = runtime.submit(const_prompt(1))
    b = runtime.submit(const_prompt(2))
    bad = runtime.submit({"x": {"class_type": "StubConst", "inputs": {"value": "nope"}},
                          "o": {"class_type": "StubOutput", "inputs": {"value": ["x", 0]}}})
    assert not bad.ok and bad.response()["error"]["type"] == "prompt_outputs_failed_validation"
    assert bad.response()["node_errors"]["x"]["errors"][0]["type"] == "invalid_input_type"
    result = runtime.cancel([a.prompt_id])
    assert result["cancelled"] == [a.prompt_id]
    runtime.start()
    assert runtime.wait_idle(20)
    assert runtime.store.get(a.prompt_id).status is JobStatus.CANCELLED
    assert runtime.store.get(b.prompt_id).status is JobStatus.SUCCEEDED
    assert runtime.store.count() == 2


def test_ui_workflows_are_converted_and_queued(runtime, calls):
    ui = {"last_node_id": 2, "last_link_id": 1, "version": 0.4,
          "nodes": [{"id": 1, "type": "StubConst", "mode": 0, "widgets_values": [7],
                     "inputs": [], "outputs": [{"name": "INT", "type": "INT", "links": [1], "slot_index": 0}]},
                    {"id": 2, "type": "StubOutput", "mode": 0, "widgets_values": [],
                     "inputs": [{"name": "value", "type": "*", "link": 1}], "outputs": []}],
          "links": [[1, 1, 0, 2, 0, "INT"]]}
    submitted = runtime.submit(ui)
    assert submitted.ok, submitted.response()
    runtime.start()
    assert runtime.wait_idle(20)
    job = runtime.store.get(submitted.prompt_id)
    assert job.outputs == {"2": {"value": [7]}}
    assert job.extra_data["extra_pnginfo"]["workflow"]["nodes"][0]["type"] == "StubConst"


def test_a_prompt_whose_worker_code_raises_ends_as_an_error_and_the_queue_moves_on(runtime, calls, monkeypatch):
    """A bug outside the executor (here: the model manager) must not leave the prompt "running" forever."""
    real = runtime.models.begin_prompt
    failures = iter([RuntimeError("model manager broke")])

    def begin_prompt() -> None:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        real()

    monkeypatch.setattr(runtime.models, "begin_prompt", begin_prompt)
    broken = runtime.submit(const_prompt(1))
    after = runtime.submit(const_prompt(2))
    runtime.start()
    assert runtime.wait_idle(20)
    job = runtime.store.get(broken.prompt_id)
    assert job.status is JobStatus.FAILED and "model manager broke" in str(job.error)
    assert job.history_entry()["worker"]["name"] == "server"
    assert runtime.store.get(after.prompt_id).status is JobStatus.SUCCEEDED
