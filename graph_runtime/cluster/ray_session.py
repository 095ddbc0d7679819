"""Joining a Ray cluster, or starting a local one, for the server (the Ray "driver").

Modes (``server.py serve --ray MODE``):

* ``auto`` — join the cluster this machine belongs to (``ray start --head`` / ``ray start
  --address=…`` ran here, or ``RAY_ADDRESS`` names one); an error if there is none.
* ``local`` — start a private cluster inside this process's session (GCS, raylet and the worker
  processes are children of the server: they stop with it, also after a ``kill -9``, with the
  help of :mod:`~graph_runtime.cluster.reaper` for the agents Ray would leave behind).
* ``attached`` — Ray is already initialised in this process (tests, notebooks): use it as is
  and leave it running on stop.
* any other value is a cluster address (``ray://host:10001`` or ``host:6379``).

``ray`` is imported here and only here, when a session starts.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODES = ("auto", "local")
NAMESPACE = "genesis"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or no cluster could be joined; the message says what to do."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable('--ray needs Ray: pip install -e ".[ray]" (or pip install "ray==2.60.0")') from exc
    return ray


class RaySession:
    """The server's connection to a Ray cluster."""

    def __init__(self, mode: str = "local", *, num_cpus: int | None = None, num_gpus: int | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        self.mode = mode
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.init_kwargs = dict(init_kwargs or {})
        self.ray: Any = None
        self._owned = False
        self._reaper: Any = None

    def start(self) -> Any:
        """Initialise Ray (per the mode) and return the ``ray`` module (once; later calls return it)."""
        if self.ray is not None:
            return self.ray
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the server never phones home on its own
        ray = import_ray()
        if ray.is_initialized():
            if self.mode not in ("attached", "local", "auto"):
                log.warning("Ray is already initialised in this process; --ray %s is ignored", self.mode)
            self.ray, self._owned = ray, False
            return ray
        if self.mode == "attached":
            raise RayUnavailable("Ray is not initialised in this process (mode 'attached')")
        kwargs: dict[str, Any] = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": True,
                                  "configure_logging": False, **self.init_kwargs}
        if self.mode == "local":
            kwargs.setdefault("num_cpus", self.num_cpus)
            if self.num_gpus is not None:
                kwargs.setdefault("num_gpus", self.num_gpus)
            address = "local"
        else:
            address = "auto" if self.mode == "auto" else self.mode
            kwargs.pop("include_dashboard", None)  # only for a cluster this process starts
        if address != "local":
            _probe(os.environ.get("RAY_ADDRESS", "") if address == "auto" else address)
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise RayUnavailable(f"no Ray cluster to join at {address!r} ({exc}); start one with "
                                 "`ray start --head` (see deploy/README.md) or use --ray local") from exc
        self.ray, self._owned = ray, True
        if self.mode == "local":
            self._start_reaper()
        resources = ray.cluster_resources()
        log.info("Ray %s: %s cluster, %d node(s), %g CPU, %g GPU", ray.__version__,
                 "a local" if self.mode == "local" else f"joined the {address}",
                 len([n for n in ray.nodes() if n.get("Alive")]), resources.get("CPU", 0), resources.get("GPU", 0))
        return ray

    def gpus(self) -> int:
        """Whole GPUs in the cluster now."""
        return int(self.ray.cluster_resources().get("GPU", 0)) if self.ray is not None else 0

    def stop(self) -> None:
        """Disconnect; a cluster this process started (``local``) stops with it."""
        if self.ray is not None and self._owned and self.ray.is_initialized():
            self.track()
            self.ray.shutdown()
        self.ray = None
        if self._reaper is not None:
            self._reaper.stdin.close()  # the reaper ends what shutdown left running, then exits
            self._reaper = None

    def track(self) -> None:
        """Tell the reaper which processes belong to the local cluster now (workers come and go)."""
        reaper = self._reaper
        if reaper is None:
            return
        import psutil

        lines = []
        for child in psutil.Process().children(recursive=True):
            if child.pid == reaper.pid:
                continue
            try:
                lines.append(f"{child.pid} {child.create_time()}\n")
            except psutil.Error:
                continue
        try:
            reaper.stdin.write("".join(lines))
            reaper.stdin.flush()
        except (OSError, ValueError):  # the reaper is gone: nothing more to tell it
            log.debug("the local cluster's reaper is gone", exc_info=True)

    def _start_reaper(self) -> None:
        import subprocess
        import sys

        self._reaper = subprocess.Popen([sys.executable, "-m", "graph_runtime.cluster.reaper"],
                                        stdin=subprocess.PIPE, text=True, start_new_session=True,
                                        cwd=str(Path(__file__).resolve().parents[2]))
        self.track()


PROBE_TIMEOUT_S = 5.0


def _probe(address: str) -> None:
    """Fail fast when nothing listens at a GCS address (``ray.init`` would retry for minutes).

    ``ray://`` client addresses and an empty one (``auto`` without ``RAY_ADDRESS``: Ray looks for a
    cluster started on this machine) are left to Ray.
    """
    if not address or address.startswith("ray://") or address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"{address!r} is not a Ray cluster address (host:port, ray://host:port, auto or local)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RayUnavailable(f"no Ray cluster to join at {address!r} ({exc}); start one with "
                             "`ray start --head` (see deploy/README.md) or use --ray local") from exc


def worker_env() -> dict[str, str]:
    """Environment for worker processes: the repository on ``PYTHONPATH`` and the offline switches.

    Workers on other machines need the same checkout at the same path (deploy/README.md).
    """
    repo = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": repo + (os.pathsep + path if path else "")}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env
