"""kill -9 of a ``serve --ray local`` server while prompts run on its workers and others wait:
the local Ray cluster dies with it, and after a restart every prompt runs to completion, in order.

The server runs as a subprocess with the ComfyUI-style gate pack of the durability test
(tests/data/custom_nodes/genesis_test_gate.py), which its Ray workers load from the same
``custom_nodes`` folder.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]" (./test.sh installs it)')
import psutil  # noqa: E402

from tests.cluster_support import poll  # noqa: E402
from tests.web_harness import free_port, http  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PACK = Path(__file__).parent / "data" / "custom_nodes" / "genesis_test_gate.py"


class RayServer:
    """``server.py serve --ray local --ray-workers 2`` on a free port, and every process it started."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / f"server-{self.port}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                   RAY_USAGE_STATS_ENABLED="0")
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "server.py"), "serve", "--base-directory", str(base), "--port", str(self.port),
             "--no-tiny-models", "--cpu", "--ray", "local", "--ray-workers", "2"],
            cwd=REPO, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        poll(self._answers, "the server to answer", timeout=120)
        poll(lambda: len([w for w in self.workers() if w.get("alive")]) == 2, "two Ray workers", timeout=180)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return http("GET", self.url + "/object_info/WaitForFile", timeout=2).status == 200
        except OSError:
            return False

    def workers(self) -> list[dict]:
        return http("GET", self.url + "/system_stats").json()["models"].get("workers", [])

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

    def family(self) -> list[psutil.Process]:
        """The server and every process under it (GCS, raylet, agents, workers)."""
        try:
            me = psutil.Process(self.proc.pid)
            return [me] + me.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def gate_prompt(path: Path, tag: int) -> dict:
    return {"1": {"class_type": "WaitForFile", "inputs": {"path": str(path), "tag": tag}}}


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    def running(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [p for p in processes if running(p)]


def test_kill_9_with_prompts_running_on_ray_workers_loses_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    shutil.copy(PACK, base / "custom_nodes" / PACK.name)
    gate = base / "gate"
    started: list[psutil.Process] = []
    servers: list[RayServer] = []
    try:
        server = RayServer(base)
        servers.append(server)
        running = [server.queue(gate_prompt(gate, tag)) for tag in (1, 2)]
        poll(lambda: sorted(server.queue_state()[0]) == sorted(running), "both prompts to run on the workers")
        assert sorted(w["running"] for w in server.workers()) == sorted(running)
        pending = [server.queue(gate_prompt(gate, 10 + i)) for i in range(3)]
        assert server.queue_state()[1] == pending
        family = server.family()
        started += family
        assert len(family) > 3  # the server, Ray's own processes and the two workers

        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        try:
            poll(lambda: not alive(family), "the local Ray cluster to die with the server", timeout=60)
        except AssertionError:
            left = [(p.pid, p.status(), " ".join(p.cmdline())[:150]) for p in alive(family)]
            raise AssertionError(f"left running after kill -9: {left}") from None

        server = RayServer(base)
        servers.append(server)
        run_now, waiting = server.queue_state()
        # the two cut-off prompts are at the front (running again, or about to), the others wait in order
        assert sorted(run_now + waiting[:2 - len(run_now)]) == sorted(running)
        assert (run_now + waiting)[2:] == pending
        gate.write_text("open")
        order = running + pending
        poll(lambda: all(pid in server.history() for pid in order), "the queue to drain", timeout=120)
        history = server.history()
        for pid in order:
            entry = history[pid]
            assert entry["status"]["status_str"] == "success", entry["status"]
            assert entry["outputs"]["1"]["text"] == ["open"]
            assert entry["worker"]["name"].startswith("worker-") and entry["worker"]["pid"] != server.proc.pid
        family = server.family()
        started += family
        assert server.stop() == 0
        poll(lambda: not alive(family), "the cluster to stop with the server", timeout=60)
    finally:
        for s in servers:
            started += s.family()
            s.stop()
        for process in alive(started):
            process.kill()
