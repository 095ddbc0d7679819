"""Queueing and results over real HTTP: /prompt, /queue, /history, /jobs, /interrupt, /free —
status codes and JSON shapes, including the error cases."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.stub_nodes import pack as stub_pack
from tests.web_harness import LiveServer, WsClient, chain, web_server  # noqa: F401


def gated(gate: str, value: int = 1) -> dict:
    """A prompt that blocks in StubWait until ``stub_pack.GATES[gate]`` is set."""
    return {"1": {"class_type": "StubConst", "inputs": {"value": value}},
            "2": {"class_type": "StubWait", "inputs": {"value": ["1", 0], "gate": gate}},
            "3": {"class_type": "StubOutput", "inputs": {"value": ["2", 0]}}}


def const(value: int) -> dict:
    return {"1": {"class_type": "StubConst", "inputs": {"value": value}},
            "2": {"class_type": "EchoOutput", "inputs": {"value": ["1", 0]}}}


def open_gate(gate: str) -> None:
    stub_pack.GATES.setdefault(gate, __import__("threading").Event()).set()


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_post_prompt_and_history(web_server: LiveServer, prefix: str) -> None:
    reply = web_server.post(prefix + "/prompt", {"prompt": chain(1, color=3, output="SaveImage"),
                                                 "client_id": "c1", "extra_data": {"extra_pnginfo": {"k": 1}}})
    assert reply.status == 200
    body = reply.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    uuid.UUID(body["prompt_id"])
    assert isinstance(body["number"], int)
    entry = web_server.wait_history(body["prompt_id"])
    assert entry["status"] == {"status_str": "success", "completed": True, "messages": entry["status"]["messages"]}
    number, pid, prompt, extra, outputs = entry["prompt"]
    assert (number, pid, outputs) == (body["number"], body["prompt_id"], ["out"])
    assert prompt["0"]["class_type"] == "EmptyImage" and extra["client_id"] == "c1" and extra["extra_pnginfo"] == {"k": 1}
    image = entry["outputs"]["out"]["images"][0]
    assert image["type"] == "output" and image["subfolder"] == ""
    assert entry["meta"]["out"]["node_id"] == "out"
    assert web_server.get(prefix + f"/history/{body['prompt_id']}").json()[body["prompt_id"]]["outputs"] == entry["outputs"]


def test_post_prompt_explicit_id_front_and_number(web_server: LiveServer) -> None:
    gate = f"g-{uuid.uuid4().hex}"
    blocker = web_server.queue(gated(gate))
    a = web_server.post("/prompt", {"prompt": const(1), "prompt_id": "my-id-a"}).json()
    b = web_server.post("/prompt", {"prompt": const(2), "front": True}).json()
    c = web_server.post("/prompt", {"prompt": const(3), "number": 0.5}).json()
    assert a["prompt_id"] == "my-id-a" and c["number"] == 0.5
    queue = web_server.get("/queue").json()
    pending = sorted(queue["queue_pending"], key=lambda item: item[0])
    assert [item[1] for item in pending][:2] == [b["prompt_id"], c["prompt_id"]]
    assert all(len(item) == 5 for item in pending)
    assert [item[1] for item in queue["queue_running"]] in ([blocker], [])
    dup = web_server.post("/prompt", {"prompt": const(4), "prompt_id": "my-id-a"})
    assert dup.status == 400 and dup.json()["error"]["type"] == "invalid_prompt"
    open_gate(gate)
    for pid in (blocker, a["prompt_id"], b["prompt_id"], c["prompt_id"]):
        assert web_server.wait_history(pid)["status"]["completed"]


def test_post_prompt_accepts_ui_workflow(web_server: LiveServer) -> None:
    workflow = {
        "last_node_id": 2, "last_link_id": 1, "version": 0.4, "groups": [], "config": {}, "extra": {},
        "nodes": [
            {"id": 1, "type": "EmptyImage", "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0, "mode": 0,
             "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "properties": {},
             "widgets_values": [8, 8, 1, 4242]},
            {"id": 2, "type": "PreviewImage", "pos": [300, 0], "size": [200, 100], "flags": {}, "order": 1,
             "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}], "outputs": [],
             "properties": {}},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }
    for body in ({"prompt": workflow}, workflow):
        reply = web_server.post("/prompt", body)
        assert reply.status == 200, reply.text
        entry = web_server.wait_history(reply.json()["prompt_id"])
        assert entry["prompt"][2]["1"]["inputs"]["color"] == 4242
        assert entry["prompt"][3]["extra_pnginfo"]["workflow"]["nodes"][0]["type"] == "EmptyImage"
        assert entry["outputs"]["2"]["images"][0]["type"] == "temp"


@pytest.mark.parametrize("body, kind", [
    (b"{not json", "invalid_json"),
    (b"", "invalid_request"),
    (b"[1, 2]", "invalid_request"),
    (b'{"prompt": "text"}', "invalid_request"),
    (b'{"prompt": {}, "front": "maybe"}', "invalid_request"),
    (b'{"client_id": "x"}', "no_prompt"),
    (b'{"prompt": {}}', "no_prompt"),
    (b'{"prompt": {"1": {"inputs": {}}}}', "invalid_prompt"),
    (b'{"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}', "invalid_prompt"),
    (b'{"prompt": {"1": {"class_type": "StubConst", "inputs": {"value": 1}}}}', "prompt_no_outputs"),
])
def test_post_prompt_errors(web_server: LiveServer, body: bytes, kind: str) -> None:
    reply = web_server.post("/prompt", raw=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400, reply.text
    data = reply.json()
    assert data["error"]["type"] == kind
    assert set(data["error"]) == {"type", "message", "details", "extra_info"}
    assert data["node_errors"] == {}
    assert web_server.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_post_prompt_node_errors_shape(web_server: LiveServer) -> None:
    prompt = {"1": {"class_type": "StubConst", "inputs": {"value": "not a number"}},
              "2": {"class_type": "EchoOutput", "inputs": {"value": ["1", 0]}}}
    data = web_server.post("/prompt", {"prompt": prompt}).json()
    assert data["error"]["type"] == "prompt_outputs_failed_validation"
    err = data["node_errors"]["1"]
    assert err["class_type"] == "StubConst" and err["dependent_outputs"] == ["2"]
    assert err["errors"][0]["extra_info"]["input_name"] == "value"
    partial = web_server.post("/prompt", {"prompt": const(5), "partial_execution_targets": []})
    assert partial.status == 400 and partial.json()["error"]["type"] == "prompt_no_outputs"


def test_get_prompt_and_queue_delete_clear_broadcast_status(web_server: LiveServer) -> None:
    client = WsClient(web_server.ws_url)
    gate = f"g-{uuid.uuid4().hex}"
    running = web_server.queue(gated(gate), client.sid)
    ids = [web_server.queue(const(i)) for i in range(3)]
    assert web_server.get("/prompt").json() == {"exec_info": {"queue_remaining": 4}}
    assert web_server.get("/api/prompt").json()["exec_info"]["queue_remaining"] == 4
    client.read_until(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 4)
    assert web_server.post("/queue", {"delete": [ids[0], "unknown"]}).status == 200
    client.read_until(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 3)
    assert [i[1] for i in web_server.get("/queue").json()["queue_pending"]] == ids[1:]
    assert web_server.post("/queue", {"clear": True}).status == 200
    client.read_until(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 1)
    queue = web_server.get("/queue").json()
    assert queue["queue_pending"] == [] and [i[1] for i in queue["queue_running"]] == [running]
    for bad in (b"{", b'{"delete": "x"}', b'{"clear": "perhaps"}'):
        reply = web_server.post("/queue", raw=bad)
        assert reply.status == 400 and "error" in reply.json()
    open_gate(gate)
    client.wait_done(running)
    client.close()


def test_history_paging_delete_clear(web_server: LiveServer) -> None:
    ids = [web_server.queue(const(10 + i)) for i in range(5)]
    for pid in ids:
        web_server.wait_history(pid)
    assert list(web_server.get("/history").json()) == ids  # completion order, oldest first
    assert list(web_server.get("/history?max_items=2").json()) == ids[-2:]
    assert list(web_server.get("/history?max_items=2&offset=1").json()) == ids[1:3]
    assert web_server.get("/history?offset=10").json() == {}
    assert web_server.get("/history?max_items=abc").status == 400
    assert web_server.post("/history", {"delete": [ids[0]]}).status == 200
    assert ids[0] not in web_server.get("/history").json()
    assert web_server.get(f"/history/{ids[0]}").status == 404
    assert web_server.post("/history", {"clear": True}).status == 200
    assert web_server.get("/api/history").json() == {}
    assert web_server.post("/history", raw=b"nope").status == 400


def test_unknown_id_is_distinguishable_from_pending(web_server: LiveServer) -> None:
    gate = f"g-{uuid.uuid4().hex}"
    running = web_server.queue(gated(gate))
    pending = web_server.queue(const(77))
    unknown = web_server.get("/history/does-not-exist")
    assert unknown.status == 404 and unknown.json() == {}
    waiting = web_server.get(f"/history/{pending}")
    assert waiting.status == 200 and waiting.json() == {} and waiting.headers["X-Job-Status"] == "pending"
    assert web_server.get("/api/jobs/does-not-exist").status == 404
    job = web_server.get(f"/api/jobs/{pending}").json()
    assert job["status"] == "pending" and job["id"] == pending
    open_gate(gate)
    web_server.wait_history(running)
    web_server.wait_history(pending)


def test_jobs_list_filter_paging_and_detail(web_server: LiveServer) -> None:
    done = [web_server.queue(chain(1, color=100 + i, output="SaveImage")) for i in range(3)]
    failing = web_server.queue({"1": {"class_type": "StubConst", "inputs": {"value": 1}},
                                "2": {"class_type": "StubFail", "inputs": {"value": ["1", 0], "message": "bad"}},
                                "3": {"class_type": "StubOutput", "inputs": {"value": ["2", 0]}}})
    for pid in done + [failing]:
        web_server.wait_history(pid)
    gate = f"g-{uuid.uuid4().hex}"
    running = web_server.queue(gated(gate))
    waiting = web_server.queue(const(5))
    history = web_server.get("/api/jobs?status=completed,failed,cancelled&limit=2&offset=0").json()
    assert history["pagination"] == {"offset": 0, "limit": 2, "total": 4, "has_more": True}
    assert [j["id"] for j in history["jobs"]] == [failing, done[2]]  # newest first
    page2 = web_server.get("/api/jobs?status=completed,failed,cancelled&limit=2&offset=2").json()
    assert [j["id"] for j in page2["jobs"]] == [done[1], done[0]] and page2["pagination"]["has_more"] is False
    job = history["jobs"][1]
    assert job["status"] == "completed" and job["outputs_count"] == 1 and job["previewable_outputs_count"] == 1
    assert job["preview_output"]["nodeId"] == "out" and job["preview_output"]["mediaType"] == "images"
    assert isinstance(job["create_time"], int) and job["execution_end_time"] >= job["execution_start_time"]
    failed = history["jobs"][0]
    assert failed["status"] == "failed" and failed["execution_error"]["node_id"] == "2"
    assert "bad" in failed["execution_error"]["exception_message"]
    queue = web_server.get("/api/jobs?status=in_progress,pending&limit=200&offset=0").json()
    by_id = {j["id"]: j["status"] for j in queue["jobs"]}
    assert by_id[waiting] == "pending" and by_id.get(running) in ("in_progress", "pending")
    detail = web_server.get(f"/api/jobs/{done[0]}").json()
    assert detail["outputs"]["out"]["images"][0]["filename"].endswith(".png")
    assert detail["workflow"]["prompt"]["0"]["class_type"] == "EmptyImage"
    assert detail["execution_status"]["status_str"] == "success"
    assets = web_server.get(f"/api/jobs/{done[0]}/assets?limit=500&offset=0").json()
    assert [a["node_id"] for a in assets["assets"]] == ["out"] and assets["pagination"]["total"] == 1
    for bad in ("status=bogus", "limit=-1", "offset=x", "sort_by=name"):
        assert web_server.get(f"/api/jobs?{bad}").status == 400
    open_gate(gate)
    web_server.wait_history(running)


def test_cancel_jobs(web_server: LiveServer) -> None:
    gate = f"g-{uuid.uuid4().hex}"
    running = web_server.queue(gated(gate))
    a, b, c = (web_server.queue(const(200 + i)) for i in range(3))
    reply = web_server.post(f"/api/jobs/{a}/cancel")
    assert reply.status == 200 and reply.json() == {"cancelled": [a]}
    assert web_server.get(f"/api/jobs/{a}").json()["status"] == "cancelled"
    assert web_server.post("/api/jobs/nope/cancel").status == 404
    reply = web_server.post("/api/jobs/cancel", {"job_ids": [b, c]})
    assert reply.status == 200 and sorted(reply.json()["cancelled"]) == sorted([b, c])
    assert web_server.post("/api/jobs/cancel", {"job_ids": []}).status == 400
    assert web_server.post("/api/jobs/cancel", {"ids": [b]}).status == 400
    assert web_server.post(f"/api/jobs/{a}/cancel").status == 409
    # cancelling the running job interrupts it
    assert web_server.post(f"/api/jobs/{running}/cancel").json() == {"cancelled": [running]}
    entry = web_server.wait_history(running)
    assert entry["status"]["status_str"] == "error"
    assert web_server.get(f"/api/jobs/{running}").json()["status"] == "cancelled"


def test_interrupt_and_free(web_server: LiveServer) -> None:
    assert web_server.post("/interrupt").status == 200  # nothing running, empty body
    assert web_server.post("/interrupt", raw=b"garbage").status == 200
    gate = f"g-{uuid.uuid4().hex}"
    client = WsClient(web_server.ws_url)
    running = web_server.queue(gated(gate), client.sid)
    client.read_until(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
    assert web_server.post("/api/interrupt").status == 200  # global interrupt
    assert web_server.wait_history(running)["status"]["status_str"] == "error"
    assert web_server.post("/free", {"unload_models": True, "free_memory": True}).status == 200
    assert web_server.post("/api/free").status == 200
    assert web_server.post("/free", {"unload_models": "sure"}).status == 400
    client.close()
