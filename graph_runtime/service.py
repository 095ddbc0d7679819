"""The runtime service: validation → durable queue → a prompt runner → events.

This is the one object the web layer and the CLI talk to.  Data flows one way: ``submit``
validates and enqueues; a :class:`PromptRunner` claims jobs from the SQLite store, runs them
and hands each report to :meth:`Runtime.record`, which writes history; every event goes to the
registered listeners together with the client id of the prompt it belongs to.

Where prompts run is the runner's business, behind one small interface: :class:`LocalWorker`
(this process, through this runtime's :class:`~graph_runtime.executor.Executor`) or
:class:`graph_runtime.cluster.pool.RayPool` (Ray workers, one per GPU, with model affinity;
``server.py serve --ray``).

In this process, prompts that wait on a network-bound node (a video provider) *park* and let the
worker claim the next prompt; see :mod:`graph_runtime.lanes` for the design.  Each claimed prompt
runs on its own thread; the GPU gate lets one of them run non-network nodes at a time.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from graph_runtime.context import RuntimeOptions
from graph_runtime.events import Event, Executing, QueueStatus
from graph_runtime.executor import ExecutionReport, Executor, InterruptToken
from graph_runtime.jobs import DuplicateJobError, Job, JobStatus, JobStore
from graph_runtime.jobs.remote import RemoteJobStore
from graph_runtime.lanes import Lanes
from graph_runtime.model_manager import manager_for
from graph_runtime.node_info import node_info, object_info
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.validation import PromptError, PromptValidator, ValidationResult

log = logging.getLogger(__name__)

Listener = Callable[[Event, "str | None"], None]

_STATUS_BY_REPORT = {"success": JobStatus.SUCCEEDED, "error": JobStatus.FAILED, "interrupted": JobStatus.INTERRUPTED}


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


@dataclass
class SubmitResult:
    """The answer to a queue request: the job, or ComfyUI-shaped validation errors."""

    ok: bool
    prompt_id: str | None = None
    number: float | None = None
    error: dict[str, Any] | None = None
    node_errors: dict[str, Any] = field(default_factory=dict)
    validation: ValidationResult | None = None

    def response(self) -> dict[str, Any]:
        if self.ok:
            number = int(self.number) if self.number is not None and float(self.number).is_integer() else self.number
            return {"prompt_id": self.prompt_id, "number": number, "node_errors": self.node_errors}
        return {"error": self.error, "node_errors": self.node_errors}


class PromptRunner(Protocol):
    """Where claimed prompts run (the runtime's one seam for it).

    A runner claims pending jobs from ``runtime.store`` when it has room, runs them, emits their
    events through :meth:`Runtime.emit` and ends each with :meth:`Runtime.record`.
    """

    def start(self) -> None:
        """Start claiming (the store has already recovered jobs cut off by a crash)."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming and interrupt what runs; a job not finished stays running (requeued at next start)."""

    def wake(self) -> None:
        """Something was queued: look at the queue now."""

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt ``prompt_id`` (None: the prompt running longest); False when it does not run here."""

    def running_prompt_ids(self) -> list[str]:
        """Prompts running now, the earliest started first."""

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """``POST /free``: now where idle, else right after the running prompt."""

    def stats(self) -> dict[str, Any]:
        """Facts for ``/system_stats`` beside the local model manager's (never blocks)."""


class Runtime:
    """Registry, validator, store, executor and prompt runner of one server or CLI run.

    ``runner`` builds the :class:`PromptRunner` for this runtime (default: :class:`LocalWorker`).
    """

    def __init__(self, paths: FolderPaths, options: RuntimeOptions | None = None, *,
                 registry: NodeRegistry, db_path: Path | None = None,
                 runner: Callable[["Runtime"], PromptRunner] | None = None) -> None:
        self.paths = paths
        self.options = options or RuntimeOptions()
        paths.ensure_dirs()
        self.registry = registry
        self.validator = PromptValidator(self.registry, paths, self.options)
        self.store = JobStore(db_path or paths.user_dir / "jobs.sqlite3")
        self.remote_jobs = RemoteJobStore(self.store.db_path)  # same file, own table and connection
        self.lanes = Lanes(self.remote_jobs, network_concurrency=self.options.network_concurrency)
        self.models = manager_for(self.options)
        self.executor = Executor(self.registry, paths, models=self.models, options=self.options, lanes=self.lanes)
        self._listeners: list[Listener] = []
        self.last_report: ExecutionReport | None = None
        self.runner: PromptRunner = runner(self) if runner is not None else LocalWorker(self)

    # -- node definitions ----------------------------------------------------------------------
    def object_info(self) -> dict[str, dict[str, Any]]:
        return object_info(self.registry, self.paths)

    def node_info(self, class_type: str) -> dict[str, Any] | None:
        definition = self.registry.get(class_type)
        return None if definition is None else node_info(definition, self.paths)

    # -- listeners -----------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit(self, event: Event, client_id: str | None) -> None:
        """Send ``event`` to every listener (the WebSocket hub), for the client that queued its prompt."""
        for listener in list(self._listeners):
            try:
                listener(event, client_id)
            except Exception:
                log.exception("listener failed on %s", event.type)

    def emit_status(self) -> None:
        self.emit(QueueStatus(None, self.store.queue_remaining()), None)

    # -- queueing ------------------------------------------------------------------------------
    def to_api_prompt(self, data: dict[str, Any]) -> dict[str, Any]:
        """An API prompt from either format (UI workflows are converted with our node definitions)."""
        if not is_ui_workflow(data):
            return data
        from graph_runtime.workflow_files.ui_to_api import convert_ui_to_api

        return convert_ui_to_api(data, self.object_info())

    def validate(self, prompt: Any, partial_targets: list[str] | None = None) -> ValidationResult:
        return self.validator.validate(prompt, partial_targets)

    def submit(self, prompt: Any, *, client_id: str | None = None, extra_data: dict[str, Any] | None = None,
               front: bool = False, number: float | None = None, partial_targets: list[str] | None = None,
               prompt_id: str | None = None) -> SubmitResult:
        """Validate and enqueue a prompt (API format, or a UI workflow that is converted first)."""
        extra_data = dict(extra_data or {})
        if is_ui_workflow(prompt):
            from graph_runtime.workflow_files.errors import WorkflowFormatError

            try:
                extra_data.setdefault("extra_pnginfo", {}).setdefault("workflow", prompt)
                prompt = self.to_api_prompt(prompt)
            except WorkflowFormatError as exc:
                err = PromptError("invalid_prompt", "Invalid workflow", str(exc))
                return SubmitResult(False, error=err.to_dict())
        result = self.validate(prompt, partial_targets)
        if not result.ok:
            return SubmitResult(False, error=result.error.to_dict() if result.error else None,
                                node_errors=result.node_errors, validation=result)
        if client_id is not None:
            extra_data["client_id"] = client_id
        prompt_id = prompt_id or str(uuid.uuid4())
        try:
            job = self.store.enqueue(prompt_id, result.prompt, extra_data=extra_data,
                                     outputs_to_execute=result.outputs, client_id=client_id, front=front,
                                     number=number)
        except DuplicateJobError:
            err = PromptError("invalid_prompt", "Duplicate prompt id", f"prompt_id {prompt_id} already exists")
            return SubmitResult(False, error=err.to_dict())
        self.emit_status()
        self.runner.wake()
        return SubmitResult(True, job.prompt_id, job.number, node_errors=result.node_errors, validation=result)

    # -- control -------------------------------------------------------------------------------
    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt a running prompt (``prompt_id``, or the one running longest)."""
        return self.runner.interrupt(prompt_id)

    def running_prompt_id(self) -> str | None:
        running = self.runner.running_prompt_ids()
        return running[0] if running else None

    def cancel(self, prompt_ids: list[str]) -> dict[str, list[str]]:
        """Cancel pending jobs (kept in history as cancelled) and interrupt running ones."""
        result = self.store.cancel(prompt_ids)
        for pid in result.running:
            self.interrupt(pid)
        self.emit_status()
        return {"cancelled": list(result.cancelled), "interrupted": list(result.running)}

    def delete_pending(self, prompt_ids: list[str]) -> list[str]:
        removed = self.store.delete_pending(prompt_ids)
        running = set(self.runner.running_prompt_ids())
        for pid in prompt_ids:
            if pid not in removed and pid in running:
                self.interrupt(pid)
        self.emit_status()
        return removed

    def clear_pending(self) -> int:
        count = self.store.clear_pending()
        self.emit_status()
        return count

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """Drop caches/models now if idle, else right after the running prompt (``POST /free``)."""
        self.runner.free(unload_models=unload_models, free_memory=free_memory)

    def memory_stats(self) -> dict[str, Any]:
        """The model manager's view (loaded models, sizes, devices, budget) for ``/system_stats``,
        plus the runner's (the Ray workers and what they hold)."""
        return {**self.models.stats(), **self.runner.stats()}

    def free_now(self, unload_models: bool, free_memory: bool) -> None:
        """``unload_models``: drop every loaded model; ``free_memory``: also drop cached outputs and give
        the freed memory back to the OS and the device (ComfyUI's semantics).  Outputs hold model
        handles, not weights, so unloading really frees the models' memory."""
        if free_memory:
            self.executor.cache.clear()
        if unload_models or free_memory:
            self.models.free(unload_models=unload_models, free_memory=free_memory)

    # -- running -------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover jobs cut off by a crash, then start the runner."""
        report = self.store.recover_after_restart()
        if report.requeued or report.failed:
            log.warning("after restart: requeued %s, failed %s", report.requeued, report.failed)
        live = [job.prompt_id for job in self.store.pending()]  # requeued prompts keep their remote jobs
        dropped = self.remote_jobs.prune(live)
        if dropped:
            log.info("dropped %d remote job records of prompts that are gone", dropped)
        self.runner.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.runner.stop(timeout)
        self.executor.close()
        self.remote_jobs.close()
        self.store.close()

    def record(self, job: Job, report: ExecutionReport, *, notes: dict[str, Any] | None = None) -> None:
        """Store a finished job's history and announce its end (``executing`` with ``node: null``).

        ``notes``: facts about the run beyond the report (the worker that ran it, the models it loaded).
        """
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in report.outputs}
        timings = {nid: {"class_type": r.class_type, "seconds": round(r.seconds, 6), **r.memory, **r.info}
                   for nid, r in report.node_runs.items()}
        for nid, info in timings.items():
            meta.setdefault(nid, {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid})
            meta[nid]["execution"] = info
        self.store.finish(job.prompt_id, _STATUS_BY_REPORT[report.status], outputs=report.outputs,
                          messages=report.messages, meta=meta, error=report.error, notes=notes)
        self.last_report = report
        self.emit_status()
        self.emit(Executing(job.prompt_id, None), job.client_id)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is pending or running (tests and the CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store.queue_remaining() == 0 and not self.runner.running_prompt_ids():
                return True
            time.sleep(0.01)
        return False


class LocalWorker:
    """Prompts run in this process, through the runtime's executor and its lanes.

    The worker thread claims a prompt whenever the GPU gate is free and runs it on a thread of its
    own; a prompt that only waits on the network lane parks (gives the gate back), so the next one
    can be claimed (:mod:`graph_runtime.lanes`).

    ``claims=False``: the worker never claims by itself; another runner hands it claimed jobs
    (:meth:`run_claimed`) — the Ray pool does so for network-bound prompts.
    """

    def __init__(self, runtime: Runtime, *, claims: bool = True) -> None:
        self.runtime = runtime
        self.claims = claims
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running_lock = threading.Lock()
        self._running: dict[str, InterruptToken] = {}  # claimed prompts: the one on the GPU and the parked ones
        self._threads: dict[str, threading.Thread] = {}
        self._pending_free: dict[str, bool] = {}
        self.identity = {"name": "server", "host": socket.gethostname(), "pid": os.getpid()}
        """Where its prompts run, for history (``worker``)."""

    @property
    def gate(self):
        return self.runtime.lanes.gate

    def start(self) -> None:
        self._stopping.clear()
        if self.claims:
            self._worker = threading.Thread(target=self._work, name="genesis-worker", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, interrupt the prompt on the GPU, and detach the parked ones: their remote
        jobs keep running at the provider and resume at the next start (they stay "running")."""
        self._stopping.set()
        with self._running_lock:
            holder = self.gate.holder
            if holder in self._running:
                self._running[holder].set()
        if self._worker is not None:
            self._worker.join(timeout)
        self.runtime.lanes.close()
        for thread in list(self._threads.values()):
            thread.join(timeout)

    def wake(self) -> None:
        """Nothing to do: the store wakes :meth:`JobStore.claim_next` on enqueue."""

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt a running prompt: ``prompt_id``, or (when None) the one running nodes on the GPU
        now, else the oldest one parked on the network lane."""
        with self._running_lock:
            if prompt_id is None:
                prompt_id = self.gate.holder or next(iter(self._running), None)
            token = self._running.get(prompt_id) if prompt_id is not None else None
            if token is None:
                return False
            token.set()
            return True

    def running_prompt_ids(self) -> list[str]:
        """The prompt on the GPU first, then the parked ones in the order they were claimed."""
        with self._running_lock:
            holder = self.gate.holder
            first = [holder] if holder in self._running else []
            return first + [pid for pid in self._running if pid != holder]

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        with self._running_lock:
            if self._running:
                self._pending_free = {"unload_models": unload_models or self._pending_free.get("unload_models", False),
                                      "free_memory": free_memory or self._pending_free.get("free_memory", False)}
                return
        self.runtime.free_now(unload_models, free_memory)

    def stats(self) -> dict[str, Any]:
        return {}

    def has_room(self) -> bool:
        """Whether a newly claimed prompt would start now (nobody holds or waits for the GPU gate)."""
        return self.gate.wait_free(0)

    def run_claimed(self, job: Job) -> bool:
        """Take the GPU gate for a claimed job and run it on a thread of its own (False: stopping)."""
        # Hand the gate to the new prompt before anything else can be claimed.
        if not self.gate.acquire(job.prompt_id, interrupted=self._stopping.is_set):
            return False  # stopping: the job stays running and is recovered at the next start
        thread = threading.Thread(target=self._run_claimed, args=(job,), daemon=True,
                                  name=f"genesis-prompt-{job.prompt_id[:8]}")
        with self._running_lock:
            self._threads[job.prompt_id] = thread
        thread.start()
        return True

    def _work(self) -> None:
        """Claim a prompt whenever the GPU gate is free and run it on a thread of its own."""
        store = self.runtime.store
        while not self._stopping.is_set():
            if not self.gate.wait_free(0.25):
                continue
            job = store.claim_next(timeout=0.25)
            if job is None:
                continue
            if not self.run_claimed(job):
                break

    def _run_claimed(self, job: Job) -> None:
        try:
            self.run_job(job)
        except Exception as exc:  # a prompt thread must not die silently, nor leave its job running forever
            log.exception("worker failed on %s", job.prompt_id)
            self._end_crashed(job, exc)
        finally:
            self.gate.release(job.prompt_id)
            self.runtime.executor.close()  # this thread's event loop
            with self._running_lock:
                self._threads.pop(job.prompt_id, None)

    def _end_crashed(self, job: Job, exc: Exception) -> None:
        """Record ``job`` as failed when the worker's own code raised outside the executor (once only:
        a job already finished stays as it was)."""
        current = self.runtime.store.get(job.prompt_id)
        if current is None or current.status is not JobStatus.RUNNING:
            return
        report = ExecutionReport(job.prompt_id, "error", error={"exception_message": str(exc),
                                                                  "exception_type": type(exc).__name__})
        try:
            self.runtime.record(job, report, notes={"worker": self.identity})
        except Exception:  # the store is closing: the job is recovered at the next start
            log.exception("could not record the failure of %s", job.prompt_id)

    def run_job(self, job: Job) -> ExecutionReport | None:
        """Execute a claimed job, store its history and announce the end (None: detached at shutdown)."""
        runtime = self.runtime
        token = InterruptToken()
        runtime.models.begin_prompt()  # models.prompt_models() then lists what this prompt used (files, SHA-256)
        with self._running_lock:
            self._running[job.prompt_id] = token
        client_id = job.client_id
        runtime.emit_status()
        try:
            report = runtime.executor.execute(job.prompt_id, job.prompt, job.outputs_to_execute,
                                              extra_data=job.extra_data, interrupt=token,
                                              sink=lambda event: runtime.emit(event, client_id))
        except asyncio.CancelledError:  # the network lane stopped under a parked prompt: detach it
            log.info("prompt %s left running; its remote jobs resume at the next start", job.prompt_id)
            with self._running_lock:
                self._running.pop(job.prompt_id, None)
            return None
        except Exception as exc:  # executor bugs still end the job cleanly
            log.exception("executor crashed on %s", job.prompt_id)
            report = ExecutionReport(job.prompt_id, "error", error={"exception_message": str(exc),
                                                                      "exception_type": type(exc).__name__})
        finally:
            with self._running_lock:
                self._running.pop(job.prompt_id, None)
                pending_free = {} if self._running else self._pending_free
                if not self._running:
                    self._pending_free = {}
        # freed activations go back to the OS now instead of slowing every allocation (MALLOC_MMAP_THRESHOLD_)
        runtime.models.memory.trim_host()
        runtime.record(job, report, notes={"worker": self.identity})
        if pending_free:
            runtime.free_now(pending_free.get("unload_models", False), pending_free.get("free_memory", False))
        runtime.lanes.forget(job.prompt_id)  # the next prompt may start once this one is fully announced
        return report
