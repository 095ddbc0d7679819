"""pytest plugin: one real local Ray cluster for the whole test session.

Register from ``tests/conftest.py`` with ``pytest_plugins = [..., "tests.conftest_ray"]``.

* ``ray_cluster`` (session): ``ray`` initialised in this process with a local cluster of 2 CPUs
  and 2 *logical* GPUs (each worker that asks for a GPU gets a ``CUDA_VISIBLE_DEVICES`` of its own
  and, on this CPU-only machine, runs on the CPU).  Started the first time a test asks for it,
  shared by every Ray test (the in-process pool of ``test_cluster_ray``, the servers that join it
  by address in ``test_cluster_join``), stopped once at the end of the session.  Skips the test
  when Ray is not installed.

Started through :class:`~graph_runtime.cluster.ray_session.RaySession` (``local``), as the server
does with ``--ray local``: its reaper ends the cluster's processes even if pytest itself is
killed.  At the end of the session the fixture checks that none of the cluster's processes (GCS,
raylet, agents, workers) outlived it — a leftover is killed and reported as an error.
"""
from __future__ import annotations

from typing import Any, Iterator

import pytest

NUM_GPUS = 2


def _ray_processes() -> list[Any]:
    """This process's descendants that belong to Ray (GCS, raylet, agents, dashboard, workers)."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "ray" in command.split("/") or "ray::" in command or "/ray/" in command or "raylet" in command \
                or "gcs_server" in command or "graph_runtime.cluster.reaper" in command:
            found.append(child)
    return found


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]" (./test.sh installs it)')
    import psutil

    from graph_runtime.cluster.ray_session import RaySession

    session = RaySession("local", num_cpus=2, num_gpus=NUM_GPUS,
                         init_kwargs={"namespace": "genesis-tests", "log_to_driver": True})
    ray = session.start()
    try:
        yield ray
    finally:
        processes = _ray_processes()
        session.stop()
        _, alive = psutil.wait_procs(processes, timeout=30)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        left = []
        for process in alive:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    left.append(process)
            except psutil.Error:
                continue
        assert not left, f"Ray processes outlived the test session: {[(p.pid, p.name()) for p in left]}"
