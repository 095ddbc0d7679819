"""A GPU worker: one process that owns one device, its loaded models and its output cache.

:class:`GenesisWorker` is a plain class (tests can drive it in-process); :func:`actor_class`
turns it into a Ray actor with two concurrency groups:

* the default group (one thread) runs :meth:`GenesisWorker.run`, a streaming generator: one
  prompt at a time, its events yielded in the order the executor emitted them;
* the ``control`` group runs :meth:`GenesisWorker.control` beside it: interrupt the running
  prompt (cooperatively: the executor's interrupt token, as ``/interrupt`` on one machine),
  free memory, report what is loaded.  A sync actor cannot cancel a running method without
  killing the process (and its loaded models); a control method setting a flag takes 0.1 s.

The executor runs on a thread of its own inside the actor, so the generator can yield events
while a node runs, and an empty batch (a heartbeat) every ``heartbeat_s`` when nothing happens:
the server tells a busy worker from a frozen one by those heartbeats.

Files nodes save go to a private staging folder and travel with their ``executed`` event
(:mod:`graph_runtime.cluster.outputs`).  Models are read from the server's model folders: the
same paths on every machine (shared storage), as with any shared model drive.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from typing import Any, Iterator

from graph_runtime.cluster.messages import JobSpec, RunOutcome, WorkerEvent, WorkerIdentity, WorkerSpec
from graph_runtime.cluster.outputs import OutputShipper
from graph_runtime.cluster.placement import model_ids_of_files
from graph_runtime.events import Event, Executed
from graph_runtime.executor import ExecutionReport, Executor, InterruptToken
from graph_runtime.file_hashes import FileHashes
from graph_runtime.model_manager import manager_for
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry, build_registry

log = logging.getLogger(__name__)

MAX_BATCH = 256
"""Events per yielded batch (a batch is one object in Ray's object store)."""
_REMEMBERED_INTERRUPTS = 64


STAGING_PREFIX = "genesis-staging-"
"""Staging folders are ``genesis-staging-<pid>-<worker>-*`` in the temp dir: a killed worker's
folder (no atexit ran) is removed by the next worker that starts on that machine."""


def _sweep_stale_staging(root: str) -> None:
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX):
            continue
        pid_text = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _process_exists(int(pid_text)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def load_registry(spec: WorkerSpec, paths: FolderPaths) -> NodeRegistry:
    """The worker's node registry: the server's packs plus the custom nodes of its folders, or
    ``spec.registry_factory`` (``"module:function"`` called without arguments) when set."""
    factory = spec.registry_factory
    if not factory:
        return build_registry(spec.packs, paths.custom_nodes_dirs)
    module_name, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module_name), attr)()


class GenesisWorker:
    """Executor + model manager + output cache of one device; one prompt at a time."""

    def __init__(self, spec: WorkerSpec, name: str) -> None:
        self.name = name
        self.spec = spec
        _sweep_stale_staging(tempfile.gettempdir())
        self._staging = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{name}-")
        atexit.register(shutil.rmtree, self._staging, True)
        self.shared_paths = spec.folders.build()  # the server's folders: models and input are read there
        self.paths = spec.folders.build(output_dir=os.path.join(self._staging, "output"),
                                        temp_dir=os.path.join(self._staging, "temp"))
        self.paths.output_dir.mkdir(parents=True, exist_ok=True)
        self.paths.temp_dir.mkdir(parents=True, exist_ok=True)
        self.registry = load_registry(spec, self.shared_paths)
        # hashes for the reproducibility record: in memory, once per file version and worker (the
        # server's JSON store is not shared between processes)
        self.models = manager_for(spec.options, hashes=FileHashes())
        self.executor = Executor(self.registry, self.paths, models=self.models, options=spec.options)
        self.shipper = OutputShipper(self.paths)
        self.identity = _identity(name)
        self._lock = threading.Lock()
        self._interrupts: OrderedDict[str, InterruptToken] = OrderedDict()
        self._running: str | None = None
        self._pending_free: dict[str, bool] = {}
        self._jobs: queue.SimpleQueue[tuple[JobSpec, InterruptToken, queue.SimpleQueue] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._execute_loop, name=f"{name}-executor", daemon=True)
        self._thread.start()
        log.info("worker %s ready on %s (pid %d, GPUs %s)", name, self.identity.host, self.identity.pid,
                 self.identity.gpu_ids or "none")

    # -- the default group: one prompt at a time -----------------------------------------------
    def run(self, job: JobSpec) -> Iterator[list[WorkerEvent] | RunOutcome]:
        """Run one prompt; yields event batches (``[]`` = heartbeat), then its :class:`RunOutcome`."""
        out: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs.put((job, self._token(job.prompt_id), out))
        heartbeat = max(self.spec.heartbeat_s, 0.01)
        while True:
            try:
                item = out.get(timeout=heartbeat)
            except queue.Empty:
                yield []
                continue
            batch: list[WorkerEvent] = []
            while True:
                if isinstance(item, RunOutcome):
                    if batch:
                        yield batch
                    yield item
                    return
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = out.get_nowait()
                except queue.Empty:
                    break
            yield batch

    # -- the control group -----------------------------------------------------------------------
    def control(self, command: str, **kwargs: Any) -> Any:
        """``interrupt`` (prompt_id), ``free`` (unload_models, free_memory), ``stats``, ``identity``."""
        if command == "interrupt":
            prompt_id = kwargs.get("prompt_id")
            with self._lock:
                if prompt_id is None:
                    prompt_id = self._running
                if prompt_id is None:
                    return False
            self._token(prompt_id).set()
            return True
        if command == "free":
            return self.free(bool(kwargs.get("unload_models")), bool(kwargs.get("free_memory")))
        if command == "stats":
            return self.stats()
        if command == "identity":
            return self.identity
        raise ValueError(f"unknown worker command {command!r}")

    def free(self, unload_models: bool, free_memory: bool) -> bool:
        """Drop models / cached outputs now if idle, else right after the running prompt; True if done now."""
        with self._lock:
            if self._running is not None:
                self._pending_free = {"unload_models": unload_models or self._pending_free.get("unload_models", False),
                                      "free_memory": free_memory or self._pending_free.get("free_memory", False)}
                return False
        self._free_now(unload_models, free_memory)
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            running = self._running
        return {"worker": self.identity.record(), "running": running, "held": sorted(self.held_models()),
                **self.models.stats()}

    def held_models(self) -> frozenset[str]:
        files = [f for row in self.models.loaded_models() for f in row.files]
        return model_ids_of_files(self.shared_paths, files)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5)
        self.executor.close()
        shutil.rmtree(self._staging, ignore_errors=True)

    # -- internals -------------------------------------------------------------------------------
    def _token(self, prompt_id: str) -> InterruptToken:
        """The interrupt token of ``prompt_id`` (an interrupt may arrive before the prompt does)."""
        with self._lock:
            token = self._interrupts.get(prompt_id)
            if token is None:
                token = self._interrupts[prompt_id] = InterruptToken()
                while len(self._interrupts) > _REMEMBERED_INTERRUPTS:
                    self._interrupts.popitem(last=False)
            return token

    def _free_now(self, unload_models: bool, free_memory: bool) -> None:
        if free_memory:
            self.executor.cache.clear()
        if unload_models or free_memory:
            self.models.free(unload_models=unload_models, free_memory=free_memory)

    def _execute_loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, token, out = item
            try:
                out.put(self._execute(job, token, out.put))
            except BaseException as exc:  # never leave the generator waiting
                log.exception("worker %s failed on %s", self.name, job.prompt_id)
                report = ExecutionReport.crashed(job.prompt_id, exc)
                out.put(RunOutcome(report, self.identity))

    def _execute(self, job: JobSpec, token: InterruptToken, put: Any) -> RunOutcome:
        started = time.perf_counter()
        resident_before = {repr(k) for k in self.models.keys()}
        self.models.begin_prompt()
        with self._lock:
            self._running = job.prompt_id

        def sink(event: Event) -> None:
            files = self.shipper.ship(event.output) if isinstance(event, Executed) else ()
            put(WorkerEvent(event, files))

        try:
            report = self.executor.execute(job.prompt_id, job.prompt, job.outputs_to_execute,
                                           extra_data=job.extra_data, interrupt=token, sink=sink)
        except Exception as exc:  # executor bugs still end the prompt cleanly
            log.exception("executor crashed on %s", job.prompt_id)
            report = ExecutionReport.crashed(job.prompt_id, exc)
        finally:
            with self._lock:
                self._running = None
                self._interrupts.pop(job.prompt_id, None)
                pending_free, self._pending_free = self._pending_free, {}
        used = self.models.prompt_models(with_sha256=False)
        loaded = [row for row in used if row.get("key") not in resident_before]
        try:
            from graph_runtime import provenance

            record = provenance.record(self.models, self.spec.options, self.shared_paths)
        except Exception:  # a record that cannot be made must not lose the prompt's results
            log.exception("could not make the reproducibility record")
            record = {}
        self.models.memory.trim_host(report.seconds)
        if pending_free:
            self._free_now(pending_free.get("unload_models", False), pending_free.get("free_memory", False))
        return RunOutcome(report, self.identity, models_used=used, models_loaded=loaded, held=self.held_models(),
                          seconds=time.perf_counter() - started, record=record)


def _identity(name: str) -> WorkerIdentity:
    node_id, gpu_ids = "", ()
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            node_id = context.get_node_id()
            gpu_ids = tuple(ray.get_gpu_ids())
    except Exception:  # not in a Ray worker (tests drive the class directly)
        pass
    return WorkerIdentity(name, socket.gethostname(), os.getpid(), node_id, gpu_ids)


def actor_class(ray: Any, *, num_gpus: float = 1, num_cpus: float = 0.5) -> Any:
    """:class:`GenesisWorker` as a Ray actor class (``ray`` is passed in: this module never imports it)."""

    class RayGenesisWorker(GenesisWorker):
        @ray.method(num_returns="streaming")
        def run(self, job: JobSpec) -> Iterator[list[WorkerEvent] | RunOutcome]:
            yield from GenesisWorker.run(self, job)

        @ray.method(concurrency_group="control")
        def control(self, command: str, **kwargs: Any) -> Any:
            return GenesisWorker.control(self, command, **kwargs)

    RayGenesisWorker.__name__ = RayGenesisWorker.__qualname__ = "GenesisWorker"
    return ray.remote(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=0,
                      concurrency_groups={"control": 2})(RayGenesisWorker)
