"""kill -9 of a ``serve --ray local`` server while prompts run on its workers and others wait:
the local Ray cluster dies with it, and after a restart every prompt runs to completion, in order.

The server runs as a subprocess with the ComfyUI-style gate pack of the durability test
(tests/data/custom_nodes/genesis_test_gate.py), which its Ray workers load from the same
``custom_nodes`` folder.
"""
from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]" (./test.sh installs it)')
import psutil  # noqa: E402

from tests.cluster_support import GATE_PACK as PACK  # noqa: E402
from tests.cluster_support import RayServer, alive, poll, wait_for_file_prompt as gate_prompt  # noqa: E402


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
