"""The runtime service: validation → durable queue → one executor worker → events.

Prompts that wait on a network-bound node (a video provider) *park* and let the worker claim the
next prompt; see :mod:`graph_runtime.lanes` for the design.  Each claimed prompt runs on its own
thread; the GPU gate lets one of them run non-network nodes at a time.

This is the one object the web layer and the CLI talk to.  Data flows one way: ``submit``
validates and enqueues; the worker thread claims jobs from the SQLite store, runs them
through the :class:`~graph_runtime.executor.Executor` and records history; every event goes
to the registered listeners together with the client id of the prompt it belongs to.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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


class Runtime:
    """Registry, validator, store, executor and worker of one server or CLI run."""

    def __init__(self, paths: FolderPaths, options: RuntimeOptions | None = None, *,
                 registry: NodeRegistry, db_path: Path | None = None) -> None:
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
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running_lock = threading.Lock()
        self._running: dict[str, InterruptToken] = {}  # claimed prompts: the one on the GPU and the parked ones
        self._threads: dict[str, threading.Thread] = {}
        self._pending_free: dict[str, bool] = {}
        self.last_report: ExecutionReport | None = None

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

    def _emit(self, event: Event, client_id: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, client_id)
            except Exception:
                log.exception("listener failed on %s", event.type)

    def _emit_status(self) -> None:
        self._emit(QueueStatus(None, self.store.queue_remaining()), None)

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
        self._emit_status()
        return SubmitResult(True, job.prompt_id, job.number, node_errors=result.node_errors, validation=result)

    # -- control -------------------------------------------------------------------------------
    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt a running prompt: ``prompt_id``, or (when None) the one running nodes on the GPU
        now, else the oldest one parked on the network lane."""
        with self._running_lock:
            if prompt_id is None:
                prompt_id = self.lanes.gate.holder or next(iter(self._running), None)
            token = self._running.get(prompt_id) if prompt_id is not None else None
            if token is None:
                return False
            token.set()
            return True

    def running_prompt_id(self) -> str | None:
        with self._running_lock:
            return self.lanes.gate.holder or next(iter(self._running), None)

    def cancel(self, prompt_ids: list[str]) -> dict[str, list[str]]:
        """Cancel pending jobs (kept in history as cancelled) and interrupt running ones."""
        result = self.store.cancel(prompt_ids)
        for pid in result.running:
            self.interrupt(pid)
        self._emit_status()
        return {"cancelled": list(result.cancelled), "interrupted": list(result.running)}

    def delete_pending(self, prompt_ids: list[str]) -> list[str]:
        removed = self.store.delete_pending(prompt_ids)
        for pid in prompt_ids:
            if pid not in removed:
                self.interrupt(pid) if pid == self.running_prompt_id() else None
        self._emit_status()
        return removed

    def clear_pending(self) -> int:
        count = self.store.clear_pending()
        self._emit_status()
        return count

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """Drop caches/models now if idle, else right after the running prompt (``POST /free``)."""
        with self._running_lock:
            busy = bool(self._running)
            if busy:
                self._pending_free = {"unload_models": unload_models or self._pending_free.get("unload_models", False),
                                      "free_memory": free_memory or self._pending_free.get("free_memory", False)}
                return
        self._free_now(unload_models, free_memory)

    def memory_stats(self) -> dict[str, Any]:
        """The model manager's view (loaded models, sizes, devices, budget) for ``/system_stats``."""
        return self.models.stats()

    def _free_now(self, unload_models: bool, free_memory: bool) -> None:
        """``unload_models``: drop every loaded model; ``free_memory``: also drop cached outputs and give
        the freed memory back to the OS and the device (ComfyUI's semantics).  Outputs hold model
        handles, not weights, so unloading really frees the models' memory."""
        if free_memory:
            self.executor.cache.clear()
        if unload_models or free_memory:
            self.models.free(unload_models=unload_models, free_memory=free_memory)

    # -- worker --------------------------------------------------------------------------------
    def start(self) -> None:
        """Recover jobs cut off by a crash, then start the worker thread."""
        report = self.store.recover_after_restart()
        if report.requeued or report.failed:
            log.warning("after restart: requeued %s, failed %s", report.requeued, report.failed)
        live = [job.prompt_id for job in self.store.pending()]  # requeued prompts keep their remote jobs
        dropped = self.remote_jobs.prune(live)
        if dropped:
            log.info("dropped %d remote job records of prompts that are gone", dropped)
        self._stopping.clear()
        self._worker = threading.Thread(target=self._work, name="genesis-worker", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, interrupt the prompt on the GPU, and detach the parked ones: their remote
        jobs keep running at the provider and resume at the next start (they stay "running")."""
        self._stopping.set()
        with self._running_lock:
            holder = self.lanes.gate.holder
            if holder in self._running:
                self._running[holder].set()
        if self._worker is not None:
            self._worker.join(timeout)
        self.lanes.close()
        for thread in list(self._threads.values()):
            thread.join(timeout)
        self.executor.close()
        self.remote_jobs.close()
        self.store.close()

    def _work(self) -> None:
        """Claim a prompt whenever the GPU gate is free and run it on a thread of its own."""
        while not self._stopping.is_set():
            if not self.lanes.gate.wait_free(0.25):
                continue
            job = self.store.claim_next(timeout=0.25)
            if job is None:
                continue
            # Hand the gate to the new prompt before anything else can be claimed.
            if not self.lanes.gate.acquire(job.prompt_id, interrupted=self._stopping.is_set):
                break  # stopping: the job stays running and is recovered at the next start
            thread = threading.Thread(target=self._run_claimed, args=(job,), daemon=True,
                                      name=f"genesis-prompt-{job.prompt_id[:8]}")
            with self._running_lock:
                self._threads[job.prompt_id] = thread
            thread.start()

    def _run_claimed(self, job: Job) -> None:
        try:
            self.run_job(job)
        except Exception:  # a prompt thread must not die silently
            log.exception("worker failed on %s", job.prompt_id)
        finally:
            self.lanes.gate.release(job.prompt_id)
            self.executor.close()  # this thread's event loop
            with self._running_lock:
                self._threads.pop(job.prompt_id, None)

    def run_job(self, job: Job) -> ExecutionReport | None:
        """Execute a claimed job, store its history and announce the end (None: detached at shutdown)."""
        token = InterruptToken()
        self.models.begin_prompt()  # models.prompt_models() then lists what this prompt used (files, SHA-256)
        with self._running_lock:
            self._running[job.prompt_id] = token
        client_id = job.client_id
        self._emit_status()
        try:
            report = self.executor.execute(job.prompt_id, job.prompt, job.outputs_to_execute,
                                           extra_data=job.extra_data, interrupt=token,
                                           sink=lambda event: self._emit(event, client_id))
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
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in report.outputs}
        timings = {nid: {"class_type": r.class_type, "seconds": round(r.seconds, 6), **r.memory, **r.info}
                   for nid, r in report.node_runs.items()}
        for nid, info in timings.items():
            meta.setdefault(nid, {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid})
            meta[nid]["execution"] = info
        self.store.finish(job.prompt_id, _STATUS_BY_REPORT[report.status], outputs=report.outputs,
                          messages=report.messages, meta=meta, error=report.error)
        self.last_report = report
        # freed activations go back to the OS now instead of slowing every allocation (MALLOC_MMAP_THRESHOLD_)
        self.models.memory.trim_host()
        self._emit_status()
        self._emit(Executing(job.prompt_id, None), client_id)
        if pending_free:
            self._free_now(pending_free.get("unload_models", False), pending_free.get("free_memory", False))
        self.lanes.forget(job.prompt_id)  # the next prompt may start once this one is fully announced
        return report

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is pending or running (tests and the CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.store.queue_remaining() == 0 and self.running_prompt_id() is None:
                return True
            time.sleep(0.01)
        return False

