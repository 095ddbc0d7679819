"""kill -9 of a live server: pending prompts survive, stay pending, then run; history is intact.

The server runs as a subprocess (``server.py serve``) with a ComfyUI-style custom node pack
(tests/data/custom_nodes/genesis_test_gate.py) whose node blocks until a file appears.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.server_process import ServerProcess, poll, wait_for_file_prompt
from tests.web_harness import http

REPO = Path(__file__).resolve().parent.parent
PACK = Path(__file__).parent / "data" / "custom_nodes" / "genesis_test_gate.py"


def gate_prompt(path: Path, tag: int) -> dict:
    return wait_for_file_prompt(path, tag)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    shutil.copy(PACK, base / "custom_nodes" / PACK.name)
    return base


def test_kill_9_keeps_pending_prompts_and_history(base: Path) -> None:
    server = ServerProcess(base)
    servers = [server]
    try:
        # one finished prompt in history
        done_gate = base / "gate-done"
        done_gate.write_text("already here")
        finished = server.queue(gate_prompt(done_gate, 0))
        poll(lambda: finished in server.history(), "the first prompt to finish")
        # a prompt blocked while running, and three queued behind it
        gate = base / "gate"
        running = server.queue(gate_prompt(gate, 1))
        pending = [server.queue(gate_prompt(gate, 10 + i)) for i in range(3)]
        poll(lambda: server.queue_state() == ([running], pending), "the first gated prompt to run")
        before = server.history()

        server.kill9()
        server = ServerProcess(base)
        servers.append(server)

        # history is intact; the cut-off prompt is back at the front; the others still wait in order
        assert server.history() == before
        run_now, waiting = server.queue_state()
        assert run_now + waiting == [running] + pending
        assert http("GET", f"{server.url}/api/jobs/{pending[-1]}").json()["status"] == "pending"
        assert http("GET", f"{server.url}/history/{pending[0]}").status == 200  # known, not finished

        gate.write_text("open")
        poll(lambda: all(pid in server.history() for pid in [running] + pending), "the queue to drain")
        history = server.history()
        assert list(history)[:1] == [finished]
        assert list(history)[1:] == [running] + pending  # ran in queue order
        for tag, pid in zip([1, 10, 11, 12], [running] + pending):
            entry = history[pid]
            assert entry["status"]["status_str"] == "success"
            assert entry["outputs"]["1"] == {"text": ["open"], "tag": [tag]}
        assert server.stop() == 0
    finally:
        for s in servers:
            s.stop()
