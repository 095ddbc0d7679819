"""The event loop never blocks: with a 2 s stall injected into prompt validation (a huge
workflow, a slow disk), WebSocket pings and ``/api/jobs`` keep answering within 50 ms, because
``POST /prompt`` validates on the façade's thread pool, not on the loop."""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from tests.web_harness import LiveServer, chain, make_runtime

STALL = 2.0


def test_a_stalled_validation_blocks_neither_websocket_pings_nor_the_jobs_api(tmp_path: Path) -> None:
    import websocket

    server = LiveServer(make_runtime(tmp_path / "base"), probe_torch=False).start()
    validator = server.runtime.validator
    original = validator.validate
    stalled, release = threading.Event(), threading.Event()

    def slow_validate(*args, **kwargs):
        stalled.set()
        release.wait(STALL)  # the injected stall: up to 2 s inside validation
        return original(*args, **kwargs)

    validator.validate = slow_validate
    ws = websocket.create_connection(server.ws_url, timeout=10)
    ws.recv()  # status
    try:
        posted: dict[str, int] = {}
        poster = threading.Thread(target=lambda: posted.setdefault("status", server.post(
            "/prompt", {"prompt": chain(1, 5)}).status))
        poster.start()
        assert stalled.wait(10)
        pings, jobs = [], []
        for i in range(5):
            start = time.perf_counter()
            ws.ping(f"p{i}")
            opcode, data = ws.recv_data(control_frame=True)
            pings.append(time.perf_counter() - start)
            assert opcode == websocket.ABNF.OPCODE_PONG and data == f"p{i}".encode()
            start = time.perf_counter()
            reply = server.get("/api/jobs?status=in_progress,pending&limit=200&offset=0")
            jobs.append(time.perf_counter() - start)
            assert reply.status == 200
        assert poster.is_alive() and not release.is_set(), "the stall must still be going on"
        assert statistics.median(pings) < 0.05 and max(pings) < STALL / 4, pings
        assert statistics.median(jobs) < 0.05 and max(jobs) < STALL / 4, jobs
        release.set()
        poster.join(10)
        assert posted["status"] == 200
    finally:
        release.set()
        ws.close()
        server.stop()
