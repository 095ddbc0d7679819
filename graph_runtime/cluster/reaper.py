"""Stops a local Ray cluster's processes when the server that started it dies, even by ``kill -9``.

Ray ties its GCS and raylet to the process that called ``ray.init()`` (the kernel kills them with
it), but the agents the raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive a
``kill -9`` of the server, measured here, and every restart would leave two more behind.  So with
``--ray local`` the server starts this small process beside the cluster, in a session of its own,
and keeps a pipe to it open: the server writes the processes of its cluster to the pipe (one
``pid create_time`` per line); when the pipe closes (the server exited, however it exited) the
reaper terminates those still alive — the ``create_time`` guards against reused process ids — and
exits.

    python -m graph_runtime.cluster.reaper      # stdin: "PID CREATE_TIME" lines until EOF
"""
from __future__ import annotations

import sys
import time

GRACE_S = 3.0


def reap(processes: dict[int, float]) -> int:
    """Terminate the listed processes that still run (then kill them after a grace period); how many."""
    import psutil

    found = []
    for pid, created in processes.items():
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - created) < 0.01:
                found.append(process)
        except psutil.Error:
            continue
    for process in found:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(found, timeout=GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(found)


def main() -> int:
    processes: dict[int, float] = {}
    for line in sys.stdin:
        try:
            pid, created = line.split()
            processes[int(pid)] = float(created)
        except ValueError:
            continue
    time.sleep(0.5)  # a clean shutdown is stopping them already; give it a moment
    reap(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
