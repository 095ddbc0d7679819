"""``server.py serve --ray auto`` joins a running cluster (as on KubeRay or after ``ray start``):
its workers run in that cluster, and stopping the server leaves the cluster running.

The cluster is the session's local one (``ray_cluster``); the server process finds it through
``RAY_ADDRESS``, which is how ``--ray auto`` finds a cluster started by ``ray start --head``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest

from tests.cluster_support import GATE_PACK, RayServer, alive, poll, wait_for_file_prompt


def test_a_server_joins_a_running_cluster_and_leaves_it_running_when_it_stops(ray_cluster, tmp_path: Path) -> None:
    ray = ray_cluster
    address = ray.get_runtime_context().gcs_address
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    shutil.copy(GATE_PACK, base / "custom_nodes" / GATE_PACK.name)
    gate = base / "gate"
    server = RayServer(base, mode="auto", workers=1, env={"RAY_ADDRESS": address})
    try:
        (worker,) = server.workers()
        # the worker runs in the session's cluster: a process under this test session's raylet
        raylets = [p for p in psutil.Process().children(recursive=True) if p.name() == "raylet"]
        assert raylets and worker["pid"] in [c.pid for r in raylets for c in r.children(recursive=True)]
        assert worker["pid"] not in [p.pid for p in server.family()]
        pid = server.queue(wait_for_file_prompt(gate, 1))
        poll(lambda: server.queue_state()[0] == [pid], "the prompt to run on the worker")
        gate.write_text("open")
        poll(lambda: pid in server.history(), "the prompt to finish")
        entry = server.history()[pid]
        assert entry["status"]["status_str"] == "success" and entry["outputs"]["1"]["text"] == ["open"]
        assert entry["worker"]["pid"] == worker["pid"] and entry["worker"]["name"] == worker["name"]
        assert server.stop() == 0
        # the server's worker is gone with it; the cluster it joined keeps running
        poll(lambda: not alive([psutil.Process(worker["pid"])]) if psutil.pid_exists(worker["pid"]) else True,
             "the server's worker to stop")
        assert ray.cluster_resources().get("GPU") == 2
        assert all(r.is_running() for r in raylets)
    finally:
        server.stop()


def test_auto_without_a_cluster_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import subprocess
    import sys

    from tests.cluster_support import REPO

    done = subprocess.run([sys.executable, str(REPO / "server.py"), "serve", "--base-directory", str(tmp_path),
                           "--ray", "127.0.0.1:1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode != 0
    assert "no Ray cluster to join" in done.stderr and "deploy/README.md" in done.stderr, done.stderr[-2000:]
