"""Workflows as functions: ``POST /api/run`` (waiting and ``wait=false``) and webhooks — signed,
retried until a 2xx, recorded in history, and never holding the queue."""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable

import pytest

from tests.web_harness import LiveServer, chain, make_runtime

SECRET = "webhook-secret-for-tests"


@pytest.fixture
def server(tmp_path: Path, calls: list[str]) -> Iterable[LiveServer]:
    live = LiveServer(make_runtime(tmp_path / "base"), probe_torch=False, webhook_secret=SECRET,
                      webhook_first_delay=0.01, webhook_timeout=5.0).start()
    yield live
    live.stop()


def test_run_waits_and_answers_with_outputs_urls_and_timings(server: LiveServer) -> None:
    reply = server.post("/api/run", {"prompt": chain(2, 0x102030, output="SaveImage")})
    assert reply.status == 200, reply.text
    result = reply.json()
    assert result["status"] == "success" and set(result) >= {"prompt_id", "outputs", "timings"}
    (image,) = result["outputs"]["out"]["images"]
    assert image["type"] == "output" and image["filename"].endswith(".png")
    assert image["url"] == f"/view?filename={image['filename']}&subfolder=&type=output"
    png = server.get(image["url"])
    assert png.status == 200 and png.body == (server.paths.output_dir / image["filename"]).read_bytes()
    timings = result["timings"]
    assert timings["run_seconds"] >= 0 and timings["total_seconds"] >= timings["run_seconds"]
    assert {n["class_type"] for n in timings["nodes"].values()} == {"EmptyImage", "ImageInvert", "SaveImage"}
    # the same answer for the same job, again: it is in history
    assert server.get(f"/history/{result['prompt_id']}").json()[result["prompt_id"]]["outputs"]["out"]["images"] \
        == [{k: v for k, v in image.items() if k != "url"}]


def test_run_reports_the_node_that_failed(server: LiveServer) -> None:
    prompt = {"c": {"class_type": "StubConst", "inputs": {"value": 1}},
              "f": {"class_type": "StubFail", "inputs": {"value": ["c", 0], "message": "the disk is full"}},
              "o": {"class_type": "StubOutput", "inputs": {"value": ["f", 0]}}}
    result = server.post("/api/run", {"prompt": prompt}).json()
    assert result["status"] == "error" and result["outputs"] == {}
    assert result["error"]["node_id"] == "f" and result["error"]["node_type"] == "StubFail"
    assert "the disk is full" in result["error"]["exception_message"]


def test_run_without_waiting_and_invalid_bodies(server: LiveServer) -> None:
    reply = server.post("/api/run?wait=false", {"prompt": chain(1, 7)})
    assert reply.status == 202 and set(reply.json()) == {"prompt_id"}
    entry = server.wait_history(reply.json()["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    bad = server.post("/api/run", {"prompt": {"x": {"class_type": "StubConst", "inputs": {"value": "many"}}}})
    assert bad.status == 400 and bad.json()["error"]["type"] == "prompt_no_outputs"
    invalid = server.post("/api/run", {"prompt": chain(1, 8), "webhook": "ftp://example.com/x"})
    assert invalid.status == 400 and invalid.json()["error"]["type"] == "invalid_webhook"
    assert server.post("/prompt", {"prompt": chain(1, 8), "extra_data": {"webhook": "not a url"}}).status == 400
    assert server.post("/api/run?wait=maybe", {"prompt": chain(1, 8)}).status == 400
    assert server.post("/api/run?timeout=-1", {"prompt": chain(1, 8)}).status == 400
    assert server.get("/history/never-queued").status == 404


def test_a_short_timeout_answers_with_the_current_state(server: LiveServer) -> None:
    from tests.stub_nodes import pack

    prompt = {"c": {"class_type": "StubConst", "inputs": {"value": 1}},
              "w": {"class_type": "StubWait", "inputs": {"value": ["c", 0], "gate": "run-timeout"}},
              "o": {"class_type": "StubOutput", "inputs": {"value": ["w", 0]}}}
    reply = server.post("/api/run?timeout=0.2", {"prompt": prompt})
    assert reply.status == 202 and reply.json()["status"] in ("pending", "running")
    pack.GATES["run-timeout"].set()
    assert server.wait_history(reply.json()["prompt_id"])["status"]["completed"]


# -- webhooks ------------------------------------------------------------------------------------

class Receiver:
    """A local webhook receiver: answers 500 to the first ``failures`` deliveries, then 204."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.done = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append((dict(self.headers), body))
                ok = len(receiver.deliveries) > receiver.failures
                self.send_response(204 if ok else 500)
                self.end_headers()
                if ok:
                    receiver.done.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook?x=1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for_note(server: LiveServer, prompt_id: str, done: Any, timeout: float = 20) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        note = server.get(f"/history/{prompt_id}").json()[prompt_id].get("genesis", {}).get("webhook")
        if note and done(note):
            return note
        time.sleep(0.01)  # poll interval
    raise AssertionError("the webhook delivery was not recorded")


def test_a_webhook_is_signed_retried_until_accepted_and_recorded(server: LiveServer) -> None:
    receiver = Receiver(failures=2)
    try:
        reply = server.post("/api/run?wait=false", {"prompt": chain(1, 9, output="SaveImage"),
                                                    "webhook": receiver.url})
        prompt_id = reply.json()["prompt_id"]
        assert receiver.done.wait(20)
        assert len(receiver.deliveries) == 3
        bodies = {body for _, body in receiver.deliveries}
        assert len(bodies) == 1  # every retry sends the same bytes
        headers, body = receiver.deliveries[-1]
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Genesis-Signature"], expected)
        assert headers["X-Genesis-Prompt-Id"] == prompt_id and headers["Content-Type"] == "application/json"
        payload = json.loads(body)
        assert payload["prompt_id"] == prompt_id and payload["status"] == "success"
        assert payload["outputs"]["out"]["images"][0]["url"].startswith("/view?filename=")
        # recorded in history, attempt by attempt (written right after each answer)
        webhook = wait_for_note(server, prompt_id, lambda w: w.get("delivered"))
        assert webhook["url"] == receiver.url and webhook["delivered"] is True
        assert [a.get("status") for a in webhook["attempts"]] == [500, 500, 204]
    finally:
        receiver.close()


def test_a_webhook_from_extra_data_on_prompt_is_delivered(server: LiveServer) -> None:
    receiver = Receiver(failures=0)
    try:
        prompt_id = server.queue(chain(1, 10), extra_data={"webhook": receiver.url})
        assert receiver.done.wait(20)
        assert json.loads(receiver.deliveries[0][1])["prompt_id"] == prompt_id
    finally:
        receiver.close()


def test_a_webhook_that_never_answers_does_not_hold_the_queue(tmp_path: Path, calls: list[str]) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    live = LiveServer(make_runtime(tmp_path / "base"), probe_torch=False, webhook_secret=SECRET,
                      webhook_timeout=60.0, webhook_attempts=3).start()
    try:
        hooked = [live.post("/api/run?wait=false", {"prompt": chain(1, 20 + i), "webhook": url}).json()["prompt_id"]
                  for i in range(3)]
        # later prompts run and finish while every delivery is still waiting for an answer
        result = live.post("/api/run?timeout=30", {"prompt": chain(1, 30)})
        assert result.status == 200 and result.json()["status"] == "success"
        for prompt_id in hooked:
            entry = live.wait_history(prompt_id)
            assert entry["status"]["completed"] and "webhook" not in entry.get("genesis", {})
    finally:
        live.stop()
        silent.close()
