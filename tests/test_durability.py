"""kill -9 of a live server: pending prompts survive, stay pending, then run; history is intact.

The server runs as a subprocess (``server.py serve``) with a ComfyUI-style custom node pack
(tests/data/custom_nodes/genesis_test_gate.py) whose node blocks until a file appears.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.web_harness import free_port, http

REPO = Path(__file__).resolve().parent.parent
PACK = Path(__file__).parent / "data" / "custom_nodes" / "genesis_test_gate.py"
TIMEOUT = 30.0


def poll(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)  # poll interval
    raise AssertionError(f"timed out waiting for {what}")


class ServerProcess:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / f"server-{self.port}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "server.py"), "serve", "--base-directory", str(base), "--port",
             str(self.port), "--no-tiny-models", "--cpu"],
            cwd=REPO, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        poll(self._answers, "the server to answer")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return http("GET", self.url + "/object_info/WaitForFile", timeout=2).status == 200
        except OSError:
            return False

    def queue(self, prompt: dict) -> str:
        reply = http("POST", self.url + "/prompt", {"prompt": prompt})
        assert reply.status == 200, reply.text
        return reply.json()["prompt_id"]

    def queue_state(self) -> tuple[list[str], list[str]]:
        q = http("GET", self.url + "/queue").json()
        return ([i[1] for i in q["queue_running"]],
                [i[1] for i in sorted(q["queue_pending"], key=lambda item: item[0])])

    def history(self) -> dict:
        return http("GET", self.url + "/history").json()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def gate_prompt(path: Path, tag: int) -> dict:
    return {"1": {"class_type": "WaitForFile", "inputs": {"path": str(path), "tag": tag}}}


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
