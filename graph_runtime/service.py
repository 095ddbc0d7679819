"""The runtime service: validation → durable queue → a prompt runner → events.

This is the one object the CLI talks to, and the web layer through its async façade
(:class:`graph_runtime.async_runtime.AsyncRuntime`).  Data flows one way: ``submit``
validates and enqueues; a :class:`PromptRunner` claims jobs from the SQLite store, runs them
and hands each report to :meth:`Runtime.record`, which writes history; every event goes to the
registered listeners together with the client id of the prompt it belongs to, and every job
that leaves the queue to the completion listeners as a :class:`JobOutcome`.

Thread model: ``submit`` and the control methods may be called from any thread (the façade
calls them from its thread pools); the runner claims and executes on threads of its own.

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
from graph_runtime.events import Event, Executing, ExecutionCached, QueueStatus
from graph_runtime.executor import ExecutionReport, Executor, InterruptToken
from graph_runtime.file_hashes import FileHashes
from graph_runtime.jobs import DuplicateJobError, Job, JobStatus, JobStore, NewJob
from graph_runtime.jobs.remote import RemoteJobStore
from graph_runtime.prompt_threads import PromptThreads
from graph_runtime.lanes import Lanes
from graph_runtime.model_manager import PromptModels, manager_for, model_handles_in
from graph_runtime.node_info import node_info, object_info
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.validation import PromptError, PromptValidator, ValidationResult

log = logging.getLogger(__name__)

Listener = Callable[[Event, "str | None"], None]
CompletionListener = Callable[["JobOutcome"], None]

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


@dataclass(frozen=True)
class SubmitRequest:
    """One prompt to queue, as ``POST /prompt`` gives it (see :meth:`Runtime.submit`)."""

    prompt: Any
    client_id: str | None = None
    extra_data: dict[str, Any] | None = None
    front: bool = False
    number: float | None = None
    partial_targets: list[str] | None = None
    prompt_id: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class JobOutcome:
    """A job that left the queue: ran to an end, or was cancelled or removed before running.

    ``status`` is its final state, None when it was removed (no history entry); ``report``
    is the executor's report when it ran.  By the time listeners hear of it, the store
    holds the final state.
    """

    prompt_id: str
    status: JobStatus | None
    owner: str | None = None
    extra_data: dict[str, Any] = field(default_factory=dict)
    report: ExecutionReport | None = None
    queued_seconds: float | None = None
    """From enqueue to the worker taking it (None when it never ran)."""
    run_seconds: float | None = None


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
        # The record of every job names the model files it used with their SHA-256 (hashed once
        # per file version, remembered across restarts).
        self.models = manager_for(self.options, hashes=FileHashes(paths.user_dir / "model_hashes.json"))
        self.executor = Executor(self.registry, paths, models=self.models, options=self.options, lanes=self.lanes)
        self._listeners: list[Listener] = []
        self._completion_listeners: list[CompletionListener] = []
        self._holds: list[threading.Event] = []
        self.queue_remaining = 0
        """Pending + running, as of the last queue change (read without touching SQLite)."""
        self.last_report: ExecutionReport | None = None
        self.runner: PromptRunner = runner(self) if runner is not None else LocalWorker(self)
        self._started = False

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
        self._announce_queue(self.store.queue_remaining())

    def _announce_queue(self, remaining: int) -> None:
        self.queue_remaining = remaining
        self.emit(QueueStatus(None, remaining), None)

    def add_completion_listener(self, listener: CompletionListener) -> None:
        """``listener(outcome)`` for every job that leaves the queue (runner or caller thread)."""
        self._completion_listeners.append(listener)

    def remove_completion_listener(self, listener: CompletionListener) -> None:
        if listener in self._completion_listeners:
            self._completion_listeners.remove(listener)

    def _completed(self, outcome: JobOutcome) -> None:
        for listener in list(self._completion_listeners):
            try:
                listener(outcome)
            except Exception:
                log.exception("completion listener failed on %s", outcome.prompt_id)

    def job_ended(self, job: Job, status: JobStatus, report: ExecutionReport | None = None) -> None:
        """Tell the completion listeners that ``job`` ended as ``status`` (the store already says so).
        :meth:`record` calls it; a runner that ends a job another way (a worker lost twice) too."""
        started = job.started_at if job.started_at is not None else job.created_at
        self._completed(JobOutcome(job.prompt_id, status, job.owner, job.extra_data, report,
                                   queued_seconds=max(0.0, started - job.created_at),
                                   run_seconds=report.seconds if report is not None else None))

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
               prompt_id: str | None = None, owner: str | None = None) -> SubmitResult:
        """Validate and enqueue a prompt (API format, or a UI workflow that is converted first).

        ``owner``: the user the job belongs to (multi-user mode).
        """
        return self.submit_many([SubmitRequest(prompt, client_id=client_id, extra_data=extra_data, front=front,
                                               number=number, partial_targets=partial_targets,
                                               prompt_id=prompt_id, owner=owner)])[0]

    def submit_many(self, requests: list["SubmitRequest"]) -> list[SubmitResult]:
        """:meth:`submit` for several prompts, in order: each is converted and validated on its
        own, and the valid ones are enqueued in one transaction (one commit, one wake-up)."""
        results: list[SubmitResult | None] = []
        new_jobs: list[tuple[int, NewJob, ValidationResult]] = []
        for request in requests:
            prepared = self._prepare(request)
            if isinstance(prepared, SubmitResult):
                results.append(prepared)
            else:
                new_jobs.append((len(results), *prepared))
                results.append(None)
        if new_jobs:
            stored = self.store.enqueue_many([job for _, job, _ in new_jobs], announce=self._announce_queue)
            for (index, job, validation), outcome in zip(new_jobs, stored):
                if isinstance(outcome, DuplicateJobError):
                    err = PromptError("invalid_prompt", "Duplicate prompt id",
                                      f"prompt_id {job.prompt_id} already exists")
                    results[index] = SubmitResult(False, error=err.to_dict())
                else:
                    results[index] = SubmitResult(True, outcome.prompt_id, outcome.number,
                                                  node_errors=validation.node_errors, validation=validation)
            if any(not isinstance(outcome, DuplicateJobError) for outcome in stored):
                self.runner.wake()
        answered = [r for r in results if r is not None]
        assert len(answered) == len(requests), "every request gets its answer"
        return answered

    def _prepare(self, request: "SubmitRequest") -> "SubmitResult | tuple[NewJob, ValidationResult]":
        """Convert and validate one request: the job to enqueue, or the error to answer."""
        extra_data = dict(request.extra_data or {})
        prompt = request.prompt
        if is_ui_workflow(prompt):
            from graph_runtime.workflow_files.errors import WorkflowFormatError

            try:
                extra_data.setdefault("extra_pnginfo", {}).setdefault("workflow", prompt)
                prompt = self.to_api_prompt(prompt)
            except WorkflowFormatError as exc:
                err = PromptError("invalid_prompt", "Invalid workflow", str(exc))
                return SubmitResult(False, error=err.to_dict())
        result = self.validate(prompt, request.partial_targets)
        if not result.ok:
            return SubmitResult(False, error=result.error.to_dict() if result.error else None,
                                node_errors=result.node_errors, validation=result)
        if request.client_id is not None:
            extra_data["client_id"] = request.client_id
        job = NewJob(request.prompt_id or str(uuid.uuid4()), result.prompt, extra_data, list(result.outputs),
                     request.client_id, request.front, request.number, owner=request.owner)
        return job, result

    # -- control -------------------------------------------------------------------------------
    def interrupt(self, prompt_id: str | None = None, *, owner: str | None = None) -> bool:
        """Interrupt a running prompt (``prompt_id``, or the one running longest) — ``owner``'s only,
        when given (multi-user mode)."""
        if owner is not None:
            mine = [pid for pid in self.runner.running_prompt_ids()
                    if (job := self.store.get(pid)) is not None and job.owner == owner]
            prompt_id = prompt_id if prompt_id is not None else next(iter(mine), None)
            if prompt_id not in mine:
                return False
        return self.runner.interrupt(prompt_id)

    def running_prompt_id(self) -> str | None:
        running = self.runner.running_prompt_ids()
        return running[0] if running else None

    def running_prompt_ids(self) -> list[str]:
        """Every prompt running now: on the GPU, on a Ray worker, or parked on the network lane."""
        return self.runner.running_prompt_ids()

    def cancel(self, prompt_ids: list[str], *, owner: str | None = None) -> dict[str, list[str]]:
        """Cancel pending jobs (kept in history as cancelled) and interrupt running ones."""
        result = self.store.cancel(prompt_ids, owner=owner)
        for pid in result.running:
            self.interrupt(pid, owner=owner)
        self.emit_status()
        for pid in result.cancelled:
            job = self.store.get(pid)
            self._completed(JobOutcome(pid, JobStatus.CANCELLED, job.owner if job else None,
                                       job.extra_data if job else {}))
        return {"cancelled": list(result.cancelled), "interrupted": list(result.running)}

    def delete_pending(self, prompt_ids: list[str], *, owner: str | None = None) -> list[str]:
        """Remove pending jobs; a listed id that is running is interrupted instead (ComfyUI)."""
        removed = self.store.delete_pending(prompt_ids, owner=owner)
        running = set(self.runner.running_prompt_ids())
        for pid in prompt_ids:
            if pid not in removed and pid in running:
                self.interrupt(pid, owner=owner)
        self.emit_status()
        for pid in removed:
            self._completed(JobOutcome(pid, None, owner))
        return removed

    def clear_pending(self, *, owner: str | None = None) -> list[str]:
        """Remove every pending job (``owner``'s only, when given); returns their ids."""
        removed = self.store.clear_pending(owner=owner)
        self.emit_status()
        for pid in removed:
            self._completed(JobOutcome(pid, None, owner))
        return removed

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
    def hold(self, until: threading.Event) -> None:
        """Run nothing before ``until`` is set (jobs still queue meanwhile).

        The server holds its runner while the demo models of a first start are written, so a
        Run pressed in those seconds waits for them instead of failing.
        """
        self._holds.append(until)

    def wait_unheld(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the holds to be released; True when none is left (runners
        call this before claiming)."""
        held = next((gate for gate in self._holds if not gate.is_set()), None)
        return held is None or (held.wait(timeout) and self.wait_unheld(0))

    def is_alive(self) -> bool:
        """Whether the runner's threads are running (``/ready``)."""
        alive = getattr(self.runner, "is_alive", None)
        return bool(alive()) if callable(alive) else True

    def start(self) -> None:
        """Recover jobs cut off by a crash, then start the runner.

        Idempotent: a second call while started does nothing (recovery on a live store would
        requeue the prompt that is running now, and a second runner would claim beside the first).
        """
        if self._started:
            log.warning("Runtime.start() called again while started: ignored")
            return
        self._started = True
        report = self.store.recover_after_restart()
        if report.requeued or report.failed:
            log.warning("after restart: requeued %s, failed %s", report.requeued, report.failed)
        self.queue_remaining = self.store.queue_remaining()
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
        status = _STATUS_BY_REPORT[report.status]
        self.store.finish(job.prompt_id, status, outputs=report.outputs,
                          messages=report.messages, meta=meta, error=report.error, notes=notes)
        self.last_report = report
        self.emit_status()
        self.job_ended(job, status, report)
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

    One thread at a time is the *claimer* (leader/follower): it claims a prompt whenever the GPU
    gate is free and runs it itself, then claims the next one.  A prompt that only waits on the
    network lane parks (gives the gate back, :mod:`graph_runtime.lanes`); when the claimer's own
    prompt parks, another prompt thread becomes the claimer, and the parked prompt's thread goes
    idle once its prompt ends.  Why not a claiming thread that hands each prompt to a prompt
    thread: every hand-off wakes a sleeping thread twice per prompt (the prompt thread to run it,
    the claimer when the gate frees), and on a busy 2-core machine each wake can deschedule the
    thread that holds the GIL; measured, those wakes were a third of the server's GIL time on
    trivial prompts.

    ``claims=False``: the worker never claims by itself; another runner hands it claimed jobs
    (:meth:`run_claimed`) — the Ray pool does so for network-bound prompts.
    """

    def __init__(self, runtime: Runtime, *, claims: bool = True) -> None:
        self.runtime = runtime
        self.claims = claims
        self._stopping = threading.Event()
        self._running_lock = threading.Lock()
        self._running: dict[str, InterruptToken] = {}  # claimed prompts: the one on the GPU and the parked ones
        # Prompt threads are kept between prompts (prompt_threads.py); each closes its loop when it ends.
        self._threads = PromptThreads(on_exit=runtime.executor.close)
        self._claim_lock = threading.Lock()
        self._claim_turn = 0
        """Bumped whenever a new claimer is started; a claim loop whose turn is past stops claiming."""
        self._claimer: threading.Thread | None = None
        self._claimer_prompt: str | None = None
        """The prompt the claimer runs now (its park hands the claim over)."""
        self._pending_free: dict[str, bool] = {}
        self.identity = {"name": "server", "host": socket.gethostname(), "pid": os.getpid()}
        """Where its prompts run, for history (``worker``)."""
        runtime.lanes.on_park(self._parked)

    @property
    def gate(self):
        return self.runtime.lanes.gate

    def start(self) -> None:
        self._stopping.clear()
        if self._threads.closed:  # started again after a stop
            self._threads = PromptThreads(on_exit=self.runtime.executor.close)
        if self.claims:
            self._new_claimer()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, interrupt the prompt on the GPU, and detach the parked ones: their remote
        jobs keep running at the provider and resume at the next start (they stay "running")."""
        self._stopping.set()
        with self._running_lock:
            holder = self.gate.holder
            if holder in self._running:
                self._running[holder].set()
        self.runtime.lanes.close()
        self._threads.close(timeout)

    def wake(self) -> None:
        """Nothing to do: the store wakes :meth:`JobStore.claim_next` on enqueue."""

    def is_alive(self) -> bool:
        """Whether a claimer thread runs (``/ready``); a worker that never claims is alive while started."""
        if self._stopping.is_set():
            return False
        if not self.claims:
            return True
        claimer = self._claimer
        return claimer is not None and claimer.is_alive()

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
        """Take the GPU gate for a job claimed elsewhere and run it on a prompt thread (False: stopping)."""
        # Hand the gate to the new prompt before anything else can be claimed.
        if not self.gate.acquire(job.prompt_id, interrupted=self._stopping.is_set):
            return False  # stopping: the job stays running and is recovered at the next start
        self._threads.submit(lambda: self._run_claimed(job))
        return True

    # -- claiming (leader/follower) ------------------------------------------------------------
    def _new_claimer(self) -> None:
        """Make a prompt thread the claimer; the previous one (if any) stops claiming."""
        with self._claim_lock:
            self._claim_turn += 1
            turn = self._claim_turn
            self._claimer_prompt = None
        try:
            self._threads.submit(lambda: self._claim_loop(turn))
        except RuntimeError:  # the prompt threads are closed: stopping
            pass

    def _parked(self, prompt_id: str) -> None:
        """A prompt parked on the network lane; if the claimer runs it, another thread claims meanwhile."""
        with self._claim_lock:
            handing_over = self._claimer_prompt == prompt_id and not self._stopping.is_set()
        if handing_over:
            self._new_claimer()

    def _claim_loop(self, turn: int) -> None:
        """Claim a prompt whenever the GPU gate is free and run it on this thread, while it is our turn."""
        with self._claim_lock:
            if turn != self._claim_turn:
                return
            self._claimer = threading.current_thread()
        store = self.runtime.store
        while not self._stopping.is_set():
            if not self.runtime.wait_unheld(0.25) or not self.gate.wait_free(0.25):
                continue
            try:
                job = store.claim_next(timeout=0.25)
            except Exception:  # the database failed (disk full, locked): keep trying, /ready says why
                log.exception("could not claim the next prompt; retrying in a second")
                self._stopping.wait(1.0)
                continue
            if job is None:
                continue
            # Hand the gate to the new prompt before anything else can be claimed.
            if not self.gate.acquire(job.prompt_id, interrupted=self._stopping.is_set):
                return  # stopping: the job stays running and is recovered at the next start
            with self._claim_lock:
                self._claimer_prompt = job.prompt_id
            self._run_claimed(job)
            with self._claim_lock:
                if turn != self._claim_turn:
                    return  # our prompt parked and another thread claims now: this one goes idle
                self._claimer_prompt = None

    def _run_claimed(self, job: Job) -> None:
        try:
            self.run_job(job)
        except Exception as exc:  # a prompt thread must not die silently, nor leave its job running forever
            log.exception("worker failed on %s", job.prompt_id)
            self._end_crashed(job, exc)
        finally:
            self.gate.release(job.prompt_id)  # the thread and its event loop stay for the next prompt

    def _end_crashed(self, job: Job, exc: Exception) -> None:
        """Record ``job`` as failed when the worker's own code raised outside the executor (once only:
        a job already finished stays as it was)."""
        current = self.runtime.store.get(job.prompt_id)
        if current is None or current.status is not JobStatus.RUNNING:
            return
        report = ExecutionReport.crashed(job.prompt_id, exc)
        try:
            self.runtime.record(job, report, notes={"worker": self.identity})
        except Exception:  # the store is closing: the job is recovered at the next start
            log.exception("could not record the failure of %s", job.prompt_id)

    def run_job(self, job: Job) -> ExecutionReport | None:
        """Execute a claimed job, store its history and announce the end (None: detached at shutdown)."""
        runtime = self.runtime
        token = InterruptToken()
        # The record lists the models this prompt uses (its own list: other prompts may be in flight).
        used = runtime.models.begin_prompt()
        with self._running_lock:
            self._running[job.prompt_id] = token
        client_id = job.client_id
        runtime.emit_status()
        try:
            def sink(event: Event) -> None:
                if isinstance(event, ExecutionCached) and event.nodes:
                    self._note_cached_models(job.prompt, event.nodes, used)
                runtime.emit(event, client_id)

            report = runtime.executor.execute(job.prompt_id, job.prompt, job.outputs_to_execute,
                                              extra_data=job.extra_data, interrupt=token, sink=sink)
        except asyncio.CancelledError:  # the network lane stopped under a parked prompt: detach it
            log.info("prompt %s left running; its remote jobs resume at the next start", job.prompt_id)
            with self._running_lock:
                self._running.pop(job.prompt_id, None)
            return None
        except Exception as exc:  # executor bugs still end the job cleanly
            log.exception("executor crashed on %s", job.prompt_id)
            report = ExecutionReport.crashed(job.prompt_id, exc)
        finally:
            with self._running_lock:
                self._running.pop(job.prompt_id, None)
                pending_free = {} if self._running else self._pending_free
                if not self._running:
                    self._pending_free = {}
        # freed activations go back to the OS now instead of slowing every allocation (MALLOC_MMAP_THRESHOLD_)
        runtime.models.memory.trim_host(report.seconds)
        runtime.record(job, report, notes={"worker": self.identity, **self._record_notes(used)})
        if pending_free:
            runtime.free_now(pending_free.get("unload_models", False), pending_free.get("free_memory", False))
        runtime.lanes.forget(job.prompt_id)  # the next prompt may start once this one is fully announced
        return report

    def _note_cached_models(self, prompt: dict[str, Any], nodes: list[str], used: PromptModels) -> None:
        """Nodes replayed from the output cache load no model, yet their models made the result:
        count the handles in their cached outputs as used, for the reproducibility record."""
        executor = self.runtime.executor
        try:
            signatures = executor.signatures(prompt)
            handles = []
            for node_id in nodes:
                entry = executor.cache.get(signatures.get(node_id, ""))
                if entry is not None:
                    handles += model_handles_in(entry.outputs)
            self.runtime.models.note_prompt_use(handles, used)
        except Exception:  # the record is a courtesy: never fail the prompt over it
            log.exception("could not list the models of cached nodes")

    def _record_notes(self, used: PromptModels) -> dict[str, Any]:
        """``{"record": ...}``: the reproducibility record of the job that just ran (its thread)."""
        from graph_runtime import provenance

        runtime = self.runtime
        try:
            return {"record": provenance.record(runtime.models, runtime.options, runtime.paths, used)}
        except Exception:  # a record that cannot be made must not lose the job's results
            log.exception("could not make the reproducibility record")
            return {}
