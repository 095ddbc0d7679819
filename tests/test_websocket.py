"""The /ws protocol against a live server: message order for normal, cached, failing and
interrupted runs, per-client addressing, binary previews and slow consumers."""
from __future__ import annotations

import asyncio
import json
import struct
import threading
import uuid

import pytest

from tests.stub_nodes import pack as stub_pack
from tests.web_harness import TIMEOUT, LiveServer, WsClient, chain, web_server  # noqa: F401
from web.state import STATE

EXECUTION_TYPES = {"execution_start", "execution_cached", "executing", "progress", "progress_state", "executed",
                   "execution_success", "execution_error", "execution_interrupted"}


def squash(types: list[str]) -> list[str]:
    """Collapse consecutive repeats so order checks read like the protocol description."""
    out: list[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


def test_connect_sends_status_with_sid_then_answers_feature_flags(web_server: LiveServer) -> None:
    client = WsClient(web_server.ws_url, client_id="me", features={"supports_preview_metadata": True})
    assert client.sid == "me"
    assert client.messages[0]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    assert client.server_features["supports_preview_metadata"] is True
    assert client.server_features["max_upload_size"] > 0
    anonymous = WsClient(web_server.ws_url)
    assert len(anonymous.sid) == 32 and anonymous.sid != "me"
    client.close()
    anonymous.close()


def test_normal_run_message_order(web_server: LiveServer) -> None:
    client = WsClient(web_server.ws_url)
    prompt_id = web_server.queue(chain(2, color=7, output="SaveImage"), client.sid)
    messages = client.wait_done(prompt_id)
    types = client.types(messages)
    execution = [t for t in types if t in EXECUTION_TYPES]
    assert execution[:2] == ["execution_start", "execution_cached"]
    assert messages[types.index("execution_cached")]["data"]["nodes"] == []
    # status precedes execution (queue change) and follows success (before executing null)
    assert types.index("status") < types.index("execution_start")
    assert types[-3:] == ["execution_success", "status", "executing"]
    assert messages[-2]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    # every node: progress_state(running), executing, [executed], progress_state(finished)
    order = [m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]]
    assert order == ["0", "1", "2", "out"]
    per_node = {}
    for m in messages:
        if m["type"] in ("executing", "executed") and m["data"]["node"]:
            per_node.setdefault(m["data"]["node"], []).append(m["type"])
        if m["type"] == "progress_state":
            for nid, st in m["data"]["nodes"].items():
                per_node.setdefault(nid, []).append("ps:" + st["state"])
    assert per_node["1"] == ["ps:running", "executing", "ps:finished"]
    assert per_node["out"] == ["ps:running", "executing", "executed", "ps:finished"]
    executed = next(m for m in messages if m["type"] == "executed")
    image = executed["data"]["output"]["images"][0]
    assert image["type"] == "output" and image["filename"].endswith(".png")
    assert all(m["data"].get("prompt_id") == prompt_id for m in messages
               if isinstance(m, dict) and m["type"] in EXECUTION_TYPES)
    client.close()


def test_fully_cached_rerun(web_server: LiveServer) -> None:
    client = WsClient(web_server.ws_url)
    prompt = chain(2, color=9, output="SaveImage")
    client.wait_done(web_server.queue(prompt, client.sid))
    again = web_server.queue(prompt, client.sid)
    messages = client.wait_done(again)
    types = client.types(messages)
    cached = next(m for m in messages if m["type"] == "execution_cached")
    assert sorted(cached["data"]["nodes"]) == ["0", "1", "2", "out"]
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == [None]
    executed = [m for m in messages if m["type"] == "executed"]
    assert [m["data"]["node"] for m in executed] == ["out"] and executed[0]["data"]["output"]["images"]
    assert squash([t for t in types if t in EXECUTION_TYPES]) == [
        "execution_start", "execution_cached", "executed", "progress_state", "execution_success", "executing"]
    history = web_server.wait_history(again)
    assert history["outputs"]["out"]["images"], "cached output nodes appear in history"
    client.close()


def test_failing_node(web_server: LiveServer) -> None:
    client = WsClient(web_server.ws_url)
    prompt = {"1": {"class_type": "StubConst", "inputs": {"value": 3}},
              "2": {"class_type": "StubFail", "inputs": {"value": ["1", 0], "message": "it broke"}},
              "3": {"class_type": "StubOutput", "inputs": {"value": ["2", 0]}}}
    prompt_id = web_server.queue(prompt, client.sid)
    messages = client.wait_done(prompt_id)
    types = client.types(messages)
    assert "execution_success" not in types
    assert types[-3:] == ["execution_error", "status", "executing"]
    error = messages[-3]["data"]
    assert error["prompt_id"] == prompt_id and error["node_id"] == "2" and error["node_type"] == "StubFail"
    assert "it broke" in error["exception_message"] and error["executed"] == ["1"]
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == ["1", "2", None]
    entry = web_server.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_error"]
    client.close()


def test_interrupt(web_server: LiveServer) -> None:
    client = WsClient(web_server.ws_url)
    gate = f"int-{uuid.uuid4().hex}"
    prompt = {"1": {"class_type": "StubConst", "inputs": {"value": 1}},
              "2": {"class_type": "StubWait", "inputs": {"value": ["1", 0], "gate": gate}},
              "3": {"class_type": "StubOutput", "inputs": {"value": ["2", 0]}}}
    prompt_id = web_server.queue(prompt, client.sid)
    client.read_until(lambda m: isinstance(m, dict) and m["type"] == "progress" and m["data"]["node"] == "2")
    assert web_server.post("/interrupt", {"prompt_id": "not-running"}).status == 200
    assert web_server.post("/interrupt", {"prompt_id": prompt_id}).status == 200
    messages = client.wait_done(prompt_id)
    types = client.types(messages)
    assert "execution_success" not in types and "execution_error" not in types
    interrupted = next(m for m in messages if m["type"] == "execution_interrupted")["data"]
    assert interrupted["prompt_id"] == prompt_id and interrupted["node_id"] == "2"
    assert types[-2:] == ["status", "executing"]
    assert web_server.wait_history(prompt_id)["status"]["status_str"] == "error"
    client.close()


def test_two_clients_get_only_their_own_messages(web_server: LiveServer) -> None:
    a, b = WsClient(web_server.ws_url), WsClient(web_server.ws_url)
    pa = web_server.queue(chain(1, color=21), a.sid)
    pb = web_server.queue(chain(1, color=22), b.sid)
    got_a, got_b = a.wait_done(pa), b.wait_done(pb)
    for messages, mine, other in ((got_a, pa, pb), (got_b, pb, pa)):
        ids = {m["data"].get("prompt_id") for m in messages
               if isinstance(m, dict) and m["type"] in EXECUTION_TYPES}
        assert ids == {mine}
        assert all(other not in json.dumps(m) for m in messages if isinstance(m, dict))
    # both see the (broadcast) queue status
    assert "status" in a.types(got_a) and "status" in b.types(got_b)
    a.close()
    b.close()


def test_prompt_without_client_id_is_broadcast(web_server: LiveServer) -> None:
    a, b = WsClient(web_server.ws_url), WsClient(web_server.ws_url)
    prompt_id = web_server.queue(chain(1, color=33))
    for client in (a, b):
        assert "execution_success" in client.types(client.wait_done(prompt_id))
    a.close()
    b.close()


def test_binary_previews_legacy_and_with_metadata(web_server: LiveServer) -> None:
    legacy = WsClient(web_server.ws_url)
    rich = WsClient(web_server.ws_url, features={"supports_preview_metadata": True})
    prompt = {"p": {"class_type": "PreviewEmitter", "inputs": {"value": 5, "count": 2, "size": 16, "noise": 0}}}
    legacy_id = web_server.queue(prompt, legacy.sid)
    frames = [m for m in legacy.wait_done(legacy_id) if isinstance(m, bytes)]
    assert len(frames) == 2
    event, fmt = struct.unpack(">II", frames[0][:8])
    assert (event, fmt) == (1, 1) and frames[0][8:10] == b"\xff\xd8"  # JPEG
    prompt["p"]["inputs"]["value"] = 6
    rich_id = web_server.queue(prompt, rich.sid)
    messages = rich.wait_done(rich_id)
    frames = [m for m in messages if isinstance(m, bytes)]
    assert len(frames) == 2
    event, length = struct.unpack(">II", frames[0][:8])
    meta = json.loads(frames[0][8:8 + length])
    assert event == 4 and meta["node_id"] == "p" and meta["prompt_id"] == rich_id
    assert meta["image_type"] == "image/jpeg" and frames[0][8 + length:8 + length + 2] == b"\xff\xd8"
    # a preview comes before the progress message of the same step
    types = rich.types(messages)
    assert types.index("binary:4") < types.index("progress")
    legacy.close()
    rich.close()


def test_progress_text_frames_carry_node_id_and_cumulative_text(web_server: LiveServer) -> None:
    client = WsClient(web_server.ws_url, features={"supports_preview_metadata": True})
    prompt_id = web_server.queue({"node 7": {"class_type": "TextEmitter", "inputs": {"count": 3}}}, client.sid)
    messages = client.wait_done(prompt_id)
    texts = []
    for m in messages:
        if isinstance(m, bytes):
            event, length = struct.unpack(">II", m[:8])
            assert event == 3
            texts.append((m[8:8 + length].decode(), m[8 + length:].decode()))
    assert texts == [("node 7", "word0 "), ("node 7", "word0 word1 "), ("node 7", "word0 word1 word2 ")]
    types = client.types(messages)
    assert types.index("binary:3") < types.index("executed")
    client.close()


def test_reconnecting_with_same_client_id_replaces_the_old_socket(web_server: LiveServer) -> None:
    first = WsClient(web_server.ws_url, client_id="dup")
    second = WsClient(web_server.ws_url, client_id="dup")
    prompt_id = web_server.queue(chain(1, color=44), "dup")
    assert "execution_success" in second.types(second.wait_done(prompt_id))
    assert web_server.call(lambda: list(web_server.app[STATE].hub.clients)) == ["dup"]
    first.close()
    second.close()


def test_a_socket_that_never_reads_does_not_block_execution(web_server: LiveServer) -> None:
    """A stalled reader costs neither time nor unbounded memory; the others get everything."""
    import socket as pysocket

    stalled = pysocket.socket()
    stalled.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", web_server.port))
    stalled.sendall((f"GET /ws?clientId=stalled HTTP/1.1\r\nHost: 127.0.0.1:{web_server.port}\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    reader = WsClient(web_server.ws_url)
    hub = web_server.app[STATE].hub
    assert web_server.call(lambda: "stalled" in hub.clients)
    # broadcast (no client id): ~1200 messages to the stalled socket as well
    prompt_id = web_server.queue(chain(300, color=55))
    messages = reader.wait_done(prompt_id)
    assert "execution_success" in reader.types(messages)
    assert sum(1 for m in messages if m["type"] == "executing") == 303
    backlog = web_server.call(lambda: len(hub.clients["stalled"].backlog) if "stalled" in hub.clients else 0)
    assert backlog <= hub.queue_limit
    stalled.close()
    reader.close()


@pytest.mark.asyncio
async def test_hub_drops_a_consumer_whose_peer_never_reads() -> None:
    """Unit-level: a socket whose transport never drains fills its backlog and is disconnected,
    while the producing (worker) thread never blocks."""
    from graph_runtime.events import Executing, Progress
    from web.ws import Client, Hub

    class StuckTransport:
        """A transport whose peer reads nothing: everything written stays buffered."""

        def __init__(self) -> None:
            self.buffered = 0
            self.aborted = False

        def write(self, data: bytes) -> None:
            self.buffered += len(data)

        def get_write_buffer_size(self) -> int:
            return self.buffered + (1 << 20)

        def is_closing(self) -> bool:
            return self.aborted

        def abort(self) -> None:
            self.aborted = True

    hub = Hub(lambda: 0, {}, queue_limit=100)
    hub.bind(asyncio.get_running_loop())
    transport = StuckTransport()
    client = Client("s", None, transport)  # type: ignore[arg-type]
    hub.clients["s"] = client
    done = threading.Event()

    def produce() -> None:  # the worker thread: must never block
        for i in range(300):
            hub.on_event(Progress("p", "n", i, 100), "s")  # lossy: skipped once the socket is behind
            hub.on_event(Executing("p", str(i), str(i)), "s")
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join(TIMEOUT)
    assert done.is_set()
    for _ in range(100):
        await asyncio.sleep(0)  # let the loop drain the inbox and the sender write
    assert "s" not in hub.clients and hub.dropped_clients == 1 and transport.aborted
    assert transport.buffered > 0  # the first batch was written before the peer stalled


def test_frames_are_rfc6455() -> None:
    from web.wsframes import encode_frame

    assert encode_frame("hi") == b"\x81\x02hi"
    assert encode_frame(b"\x00\x01") == b"\x82\x02\x00\x01"
    medium = encode_frame("x" * 300)
    assert medium[:4] == b"\x81\x7e\x01\x2c" and len(medium) == 304
    large = encode_frame(b"y" * 70000)
    assert large[:2] == b"\x82\x7f" and int.from_bytes(large[2:10], "big") == 70000
    assert encode_frame("é")[1] == 2  # length counts UTF-8 bytes


def test_event_payload_matches_event_data() -> None:
    from graph_runtime import events as ev
    from web.ws import event_payload

    samples = [ev.ExecutionStart("p"), ev.ExecutionCached("p", ["1", "2"]), ev.Executing("p", "1", "1"),
               ev.Executing("p", None), ev.Progress("p", "3", 1, 4),
               ev.ProgressState("p", {"1": ev.NodeProgress(0, 1, "running", "1", "p", "1")}),
               ev.Executed("p", "9", "9", {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}),
               ev.ExecutionSuccess("p"), ev.ExecutionError("p", "2", "X", ["1"], "boom", "ValueError", ["tb"]),
               ev.ExecutionInterrupted("p", "2", "X", ["1"]), ev.QueueStatus(None, 3)]
    for event in samples:
        assert json.dumps(event_payload(event), sort_keys=True) == json.dumps(event.data(), sort_keys=True)


def test_reconnect_during_a_run_resends_the_executing_node(web_server: LiveServer) -> None:
    gate = f"re-{uuid.uuid4().hex}"
    first = WsClient(web_server.ws_url, client_id="phone")
    prompt = {"1": {"class_type": "StubConst", "inputs": {"value": 1}},
              "2": {"class_type": "StubWait", "inputs": {"value": ["1", 0], "gate": gate}},
              "3": {"class_type": "StubOutput", "inputs": {"value": ["2", 0]}}}
    prompt_id = web_server.queue(prompt, "phone")
    first.read_until(lambda m: isinstance(m, dict) and m["type"] == "executing" and m["data"]["node"] == "2")
    first.close()
    again = WsClient(web_server.ws_url, client_id="phone")
    resent = again.read_until(lambda m: isinstance(m, dict) and m["type"] != "status")
    assert resent == {"type": "executing", "data": {"node": "2", "display_node": "2", "prompt_id": prompt_id}}
    stub_pack.GATES.setdefault(gate, threading.Event()).set()
    assert "execution_success" in again.types(again.wait_done(prompt_id))
    again.close()
