"""RayPool: the runtime's prompts run on Ray workers (one per GPU), dispatched with model affinity.

The pool is one implementation of the runtime's "where prompts run" interface
(:class:`graph_runtime.service.PromptRunner`); the other is the in-process worker thread.  The
server stays the single source of truth: the SQLite queue and history, the HTTP API and the
WebSocket are the same as on one machine.

Threads (all in the server process):

* **the dispatcher**: wakes when a prompt is queued, a worker becomes idle, an affinity wait
  ends, or at least every second; checks the workers' health (below), then asks the
  :class:`~graph_runtime.cluster.dispatch.AffinityDispatcher` which pending prompt goes to which
  idle worker and claims those prompts in the store (:meth:`JobStore.claim`);
* **one thread per worker slot**: sends the claimed prompt to its actor and reads the streamed
  event batches in order: lands output files in the server's folders, forwards each event to
  the runtime's listeners (the WebSocket hub), and records the outcome in history with the
  worker's name, host and pid and the models it had to load;
* **the local lane**: prompts that only wait on the network (video providers) run in the server
  process (the runtime's in-process worker, with its network lane: such prompts park while they
  wait on a provider, so many can wait at once) and never take a GPU worker.

Faults:

* a worker process dies mid-prompt (killed, out of memory, node lost): its stream raises
  ``RayActorError``; the prompt goes back to the front of the queue once
  (:meth:`JobStore.requeue`, the rule used after a ``kill -9`` of the server) and runs on
  another worker; a second death fails it.  The slot gets a fresh actor.
* a worker stops answering (no event or heartbeat for ``hang_timeout`` seconds) or ignores an
  interrupt for ``interrupt_grace`` seconds: ``ray.kill``, then as above — except that a prompt
  the user interrupted ends as interrupted instead of running again.
* the server dies: its actors die with it (the server owns them) and their prompts are still
  ``running`` in SQLite: the next start requeues them (``recover_after_restart``).
* the server stops: running prompts are interrupted (as on one machine), the actors killed.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graph_runtime.cluster.dispatch import DEFAULT_AFFINITY_WAIT, AffinityDispatcher, PendingPrompt, WorkerState
from graph_runtime.cluster.messages import (FolderLayout, JobSpec, RunOutcome, WorkerEvent, WorkerIdentity,
                                            WorkerSpec)
from graph_runtime.cluster.outputs import OutputLanding
from graph_runtime.cluster.placement import prompt_model_ids, runs_in_server
from graph_runtime.cluster.ray_session import RaySession, worker_env
from graph_runtime.cluster.worker import actor_class
from graph_runtime.events import Executed, Executing, ExecutionError, ExecutionInterrupted
from graph_runtime.executor import ExecutionReport
from graph_runtime.jobs import Job, JobStateError, JobStatus

if TYPE_CHECKING:  # pragma: no cover
    from graph_runtime.service import LocalWorker, Runtime

log = logging.getLogger(__name__)

LOOKAHEAD = 64
"""Pending prompts the dispatcher considers at once (in run order)."""


@dataclass(frozen=True)
class PoolSettings:
    """How many workers and how they are watched (``server.py serve --ray-*`` flags)."""

    workers: int | None = None  # None: one per GPU in the cluster (one CPU worker when it has none)
    affinity: bool = True
    affinity_wait: float = DEFAULT_AFFINITY_WAIT
    heartbeat_s: float = 1.0
    hang_timeout: float = 60.0
    interrupt_grace: float = 30.0
    start_timeout: float = 300.0
    cpus_per_worker: float = 0.0
    registry_factory: str | None = None  # "module:function" building the workers' registry (tests)
    packs: tuple[str, ...] = ()  # else the node pack modules workers load (server.py: nodes.PACKS)


@dataclass
class _Slot:
    """One worker position: its current actor and the prompt it runs."""

    state: WorkerState
    actor: Any = None
    identity: WorkerIdentity | None = None
    job: Job | None = None
    last_seen: float = 0.0
    interrupt_at: float | None = None
    kill_reason: str | None = None
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.state.name


@dataclass
class _Seen:
    prompt: PendingPrompt
    local: bool


class RayPool:
    """Prompts run on Ray workers; network-bound ones in this process."""

    def __init__(self, runtime: "Runtime", session: RaySession, settings: PoolSettings | None = None, *,
                 local: "LocalWorker | None" = None) -> None:
        from graph_runtime.service import LocalWorker

        self.runtime = runtime
        self.session = session
        self.settings = settings or PoolSettings()
        self.local = local if local is not None else LocalWorker(runtime, claims=False)
        self.dispatcher = AffinityDispatcher(affinity=self.settings.affinity, affinity_wait=self.settings.affinity_wait)
        self.landing = OutputLanding(runtime.paths)
        self.dispatch_seconds = 0.0  # time spent planning and claiming (bench: overhead per prompt)
        self.dispatched = 0
        self.replaced = 0
        self._ray: Any = None
        self._actor_cls: Any = None
        self._slots: list[_Slot] = []
        self._names = itertools.count(1)
        self._seen: dict[str, _Seen] = {}
        self._wake = threading.Condition()
        self._woken = False
        self._stopping = threading.Event()
        self._dispatcher: threading.Thread | None = None
        self._local_inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._local_thread: threading.Thread | None = None
        self._local_busy = False
        self._state_lock = threading.Lock()

    # -- PromptRunner ------------------------------------------------------------------------------
    def start(self) -> None:
        """Join the cluster, then start the workers and the dispatcher (in the background)."""
        self._ray = self.session.start()
        self._stopping.clear()
        count = self._worker_count()
        gpus = self.session.gpus()
        per_worker_gpu = 1 if gpus >= count and self.runtime.options.device != "cpu" else 0
        if 0 < gpus < count:
            log.warning("%d workers asked for and the cluster has %d GPU(s): the workers run on the CPU", count, gpus)
        self._actor_cls = actor_class(self._ray, num_gpus=per_worker_gpu, num_cpus=self.settings.cpus_per_worker)
        self._spec = WorkerSpec(FolderLayout.of(self.runtime.paths), self.runtime.options,
                                self.settings.registry_factory, self.settings.heartbeat_s,
                                tuple(self.settings.packs))
        if not self._spec.packs and not self._spec.registry_factory:
            log.warning("Ray workers get no node packs (PoolSettings.packs), only custom nodes")
        self._slots = [_Slot(WorkerState(self._new_name(), busy=True, alive=False)) for _ in range(count)]
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._slot_loop, args=(slot,), name=f"genesis-{slot.name}",
                                           daemon=True)
            slot.thread.start()
        self._local_thread = threading.Thread(target=self._local_loop, name="genesis-local-lane", daemon=True)
        self._local_thread.start()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="genesis-dispatcher", daemon=True)
        self._dispatcher.start()
        log.info("Ray pool: %d worker(s) (%s each), affinity %s", count,
                 "1 GPU" if per_worker_gpu else "CPU", "on" if self.settings.affinity else "off")

    def wait_ready(self, timeout: float = 300.0) -> bool:
        """Block until every slot has a live actor (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._slots and all(s.actor is not None and s.state.alive for s in self._slots):
                return True
            with self._wake:
                self._wake.wait(0.05)
        return False

    def is_alive(self) -> bool:
        """Whether the dispatcher runs (``/ready``)."""
        return self._dispatcher is not None and self._dispatcher.is_alive() and not self._stopping.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt running prompts (they end as interrupted, as on one machine), stop the actors."""
        self._stopping.set()
        self.wake()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        for slot in self._slots:
            if slot.job is not None and slot.actor is not None:
                self._send_interrupt(slot, slot.job.prompt_id)
            slot.inbox.put(None)
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            self._kill(slot, "the server is stopping")
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(max(0.5, deadline - time.monotonic()))
        self._local_inbox.put(None)
        self.local.stop(timeout)
        if self._local_thread is not None:
            self._local_thread.join(max(0.5, deadline - time.monotonic()))
        self.session.stop()

    def wake(self) -> None:
        with self._wake:
            self._woken = True
            self._wake.notify_all()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt ``prompt_id`` wherever it runs (None: the prompt that started first)."""
        if prompt_id is None:
            running = self.running_prompt_ids()
            if not running:
                return False
            prompt_id = running[0]
        for slot in self._slots:
            job = slot.job
            if job is not None and job.prompt_id == prompt_id:
                self._send_interrupt(slot, prompt_id)
                return True
        return self.local.interrupt(prompt_id)

    def running_prompt_ids(self) -> list[str]:
        """Running prompts, the earliest started first."""
        jobs = [s.job for s in self._slots if s.job is not None]
        ids = [j.prompt_id for j in sorted(jobs, key=lambda j: j.started_at or 0.0)]
        return self.local.running_prompt_ids() + ids

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """``POST /free`` on every worker (each frees now if idle, else after its prompt) and here."""
        for slot in self._slots:
            if slot.actor is not None:
                try:
                    slot.actor.control.remote("free", unload_models=unload_models, free_memory=free_memory)
                except Exception:  # a dead actor is being replaced anyway
                    log.debug("free on %s failed", slot.name, exc_info=True)
            if unload_models or free_memory:
                slot.state.models = frozenset()
        self.local.free(unload_models=unload_models, free_memory=free_memory)

    def stats(self) -> dict[str, Any]:
        """The workers as the dispatcher sees them (never blocks on a worker)."""
        return {"workers": [self._slot_stats(s) for s in self._slots]}

    # -- more for tests, the bench and /system_stats --------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        return [self._slot_stats(s) for s in self._slots]

    def actor_of(self, name: str) -> Any:
        for slot in self._slots:
            if slot.name == name:
                return slot.actor
        raise KeyError(name)

    def _slot_stats(self, slot: _Slot) -> dict[str, Any]:
        return {"name": slot.name, "alive": slot.state.alive and slot.actor is not None,
                **({"host": slot.identity.host, "pid": slot.identity.pid} if slot.identity else {}),
                "busy": slot.job is not None, "running": slot.job.prompt_id if slot.job else None,
                "models": sorted(slot.state.models)}

    # -- the dispatcher ------------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        wake_at: float | None = None
        while not self._stopping.is_set():
            timeout = 1.0 if wake_at is None else min(1.0, max(0.0, wake_at - time.monotonic()))
            with self._wake:
                if not self._woken:
                    self._wake.wait(timeout)
                self._woken = False
            if self._stopping.is_set():
                return
            try:
                self._watchdog(time.monotonic())
                wake_at = self._dispatch(time.monotonic())
            except Exception:  # the dispatcher must survive anything (a closed store at shutdown …)
                if not self._stopping.is_set():
                    log.exception("dispatcher failed")
                wake_at = None

    def _dispatch(self, now: float) -> float | None:
        if not self.runtime.wait_unheld(0):  # a first start still writes its demo models
            return now + 0.25
        started = time.perf_counter()
        order = self.runtime.store.pending_order(LOOKAHEAD)
        pending: list[PendingPrompt] = []
        local: list[str] = []
        for prompt_id, priority in order:
            seen = self._seen.get(prompt_id)
            if seen is None:
                job = self.runtime.store.get(prompt_id)
                if job is None:
                    continue
                registry = self.runtime.registry
                seen = _Seen(PendingPrompt(prompt_id, priority, prompt_model_ids(job.prompt, registry), now),
                             runs_in_server(job.prompt, registry))
                self._seen[prompt_id] = seen
            if seen.local:
                local.append(prompt_id)
            else:
                pending.append(seen.prompt)
        if len(self._seen) > 4 * LOOKAHEAD:
            current = {pid for pid, _ in order}
            self._seen = {pid: s for pid, s in self._seen.items() if pid in current}
        claimed = 0
        if local and not self._local_busy and self.local.has_room():
            job = self.runtime.store.claim(local[0])
            self._seen.pop(local[0], None)
            if job is not None:
                self._local_busy = True
                self._local_inbox.put(job)
                claimed += 1
        with self._state_lock:  # slot threads change states only under this lock
            plan = self.dispatcher.plan(pending, [s.state for s in self._slots], now)
            by_name = {s.name: s for s in self._slots}
            for assignment in plan.assignments:
                slot = by_name.get(assignment.worker)
                if slot is None or slot.state.busy or not slot.state.alive:  # pragma: no cover - defensive
                    continue
                job = self.runtime.store.claim(assignment.prompt_id)
                seen = self._seen.pop(assignment.prompt_id, None)
                if job is None:  # deleted or cancelled meanwhile
                    continue
                slot.state.busy = True
                if seen is not None:  # it will hold them soon: later prompts of these models wait for it
                    slot.state.models = slot.state.models | seen.prompt.models
                slot.job = job
                slot.last_seen = time.monotonic()
                slot.interrupt_at = None
                slot.inbox.put(job)
                claimed += 1
                self.dispatched += 1
                log.debug("prompt %s %s → %s (%s); workers: %s", job.prompt_id, sorted(seen.prompt.models) if seen else "?",
                          slot.name, "warm" if assignment.warm else "cold",
                          [(s.name, s.state.busy, sorted(s.state.models)) for s in self._slots])
        self.dispatch_seconds += time.perf_counter() - started
        if claimed:
            self.runtime.emit_status()
        return plan.wake_at

    def _watchdog(self, now: float) -> None:
        settings = self.settings
        for slot in self._slots:
            if slot.job is None or slot.actor is None or slot.kill_reason is not None:
                continue
            if now - slot.last_seen > settings.hang_timeout:
                self._kill(slot, f"worker {slot.name} stopped answering for {settings.hang_timeout:g} s")
            elif slot.interrupt_at is not None and now - slot.interrupt_at > settings.interrupt_grace:
                self._kill(slot, f"worker {slot.name} ignored an interrupt for {settings.interrupt_grace:g} s")

    # -- one worker slot -----------------------------------------------------------------------------
    def _slot_loop(self, slot: _Slot) -> None:
        while not self._stopping.is_set():
            if slot.actor is None and not self._start_actor(slot):
                if self._stopping.wait(5.0):
                    return
                continue
            job = slot.inbox.get()
            if job is None:
                return
            self._run(slot, job)

    def _start_actor(self, slot: _Slot) -> bool:
        ray = self._ray
        actor = self._actor_cls.options(runtime_env={"env_vars": worker_env()}).remote(self._spec, slot.name)
        try:
            identity = ray.get(actor.control.remote("identity"), timeout=self.settings.start_timeout)
        except Exception as exc:
            log.error("worker %s did not start: %s", slot.name, exc)
            ray.kill(actor, no_restart=True)
            return False
        with self._state_lock:
            slot.actor, slot.identity = actor, identity
            slot.kill_reason = None
            slot.state.models = frozenset()
            slot.state.alive = True
            slot.state.busy = False
            slot.state.released_at = time.monotonic()
        log.info("worker %s started on %s (pid %d)", slot.name, identity.host, identity.pid)
        self.session.track()
        self.wake()
        return True

    def _run(self, slot: _Slot, job: Job) -> None:
        ray = self._ray
        outcome: RunOutcome | None = None
        lost: str | None = None
        spec = JobSpec(job.prompt_id, job.prompt, job.outputs_to_execute, job.extra_data)
        try:
            for ref in slot.actor.run.remote(spec):
                item = ray.get(ref)
                slot.last_seen = time.monotonic()
                if isinstance(item, RunOutcome):
                    outcome = item
                else:
                    self._forward(slot, job, item)
        except ray.exceptions.RayActorError as exc:
            lost = slot.kill_reason or f"worker {slot.name} died ({type(exc).__name__})"
        except Exception as exc:  # an error inside the worker's own code: the prompt fails, the worker stays
            log.exception("worker %s failed on %s", slot.name, job.prompt_id)
            outcome = RunOutcome(ExecutionReport(job.prompt_id, "error", error={
                "exception_message": str(exc), "exception_type": type(exc).__name__}), slot.identity)
        if lost is not None:
            self._on_lost(slot, job, lost)
            return
        if outcome is None:
            outcome = RunOutcome(ExecutionReport(job.prompt_id, "error", error={
                "exception_message": f"worker {slot.name} ended the prompt without a result",
                "exception_type": "WorkerError"}), slot.identity)
        self._record(slot, job, outcome)
        self._release(slot, outcome.held)

    def _forward(self, slot: _Slot, job: Job, batch: list[WorkerEvent]) -> None:
        for item in batch:
            event = item.event
            if item.files:
                self.landing.land(slot.name, item.files)
            if isinstance(event, Executed) and event.output:
                event = dataclasses.replace(event, output=self.landing.rewrite(slot.name, event.output))
            self.runtime.emit(event, job.client_id)

    def _record(self, slot: _Slot, job: Job, outcome: RunOutcome) -> None:
        report = outcome.report
        report.outputs = {nid: self.landing.rewrite(slot.name, ui) for nid, ui in report.outputs.items()}
        worker = (outcome.worker or slot.identity)
        notes = {"worker": worker.record() if worker else {"name": slot.name},
                 "models_loaded": outcome.models_loaded, "models": outcome.models_used}
        if outcome.record:
            notes["record"] = outcome.record
        self.runtime.record(job, report, notes=notes)

    def _release(self, slot: _Slot, held: frozenset[str]) -> None:
        with self._state_lock:
            slot.job = None
            slot.interrupt_at = None
            slot.state.models = held
            slot.state.busy = False
            slot.state.released_at = time.monotonic()
        self.wake()

    def _on_lost(self, slot: _Slot, job: Job, reason: str) -> None:
        """The slot's actor died under ``job``: requeue it (or end it), give the slot a new actor."""
        interrupted = slot.interrupt_at is not None
        with self._state_lock:
            slot.actor, slot.identity, slot.job = None, None, None
            slot.state.alive, slot.state.models = False, frozenset()
        if self._stopping.is_set():  # left running in the store: the next start requeues it
            log.warning("%s while the server stops; prompt %s resumes at the next start", reason, job.prompt_id)
            return
        log.warning("%s while running prompt %s", reason, job.prompt_id)
        try:
            if interrupted:
                self._end_interrupted(slot, job, reason)
            elif self.runtime.store.requeue(job.prompt_id, reason=f"{reason}; the prompt was retried once"):
                log.warning("prompt %s requeued at the front", job.prompt_id)
                self.runtime.emit_status()
            else:
                self._end_failed(job, reason)
        except (KeyError, JobStateError):
            log.exception("could not requeue %s", job.prompt_id)
        old = slot.name
        with self._state_lock:
            slot.state = WorkerState(self._new_name(), busy=True, alive=False)
        self.replaced += 1
        log.warning("replacing worker %s with %s", old, slot.name)
        self.wake()

    def _end_interrupted(self, slot: _Slot, job: Job, reason: str) -> None:
        event = ExecutionInterrupted(job.prompt_id, None, None, [])
        self.runtime.emit(event, job.client_id)
        report = ExecutionReport(job.prompt_id, "interrupted", messages=[[event.type, event.data()]])
        self.runtime.record(job, report, notes={"worker": slot.identity.record() if slot.identity else {},
                                                 "lost": reason})

    def _end_failed(self, job: Job, reason: str) -> None:
        message = f"{reason}; it had already been retried once, so it is not retried again"
        event = ExecutionError(job.prompt_id, exception_message=message, exception_type="WorkerLost")
        self.runtime.emit(event, job.client_id)
        self.runtime.emit_status()
        ended = self.runtime.store.get(job.prompt_id)
        self.runtime.job_ended(ended or job, JobStatus.FAILED)  # /api/run waiters, webhooks, metrics
        self.runtime.emit(Executing(job.prompt_id, None), job.client_id)

    def _send_interrupt(self, slot: _Slot, prompt_id: str) -> None:
        if slot.interrupt_at is None:
            slot.interrupt_at = time.monotonic()
        try:
            slot.actor.control.remote("interrupt", prompt_id=prompt_id)
        except Exception:  # the actor died: its prompt is being handled by the slot thread
            log.debug("interrupt on %s failed", slot.name, exc_info=True)

    def _kill(self, slot: _Slot, reason: str) -> None:
        actor = slot.actor
        if actor is None:
            return
        slot.kill_reason = reason
        if not self._stopping.is_set():
            log.warning("%s: killing it", reason)
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:
            log.debug("kill of %s failed", slot.name, exc_info=True)

    def _new_name(self) -> str:
        return f"worker-{next(self._names)}"

    def _worker_count(self) -> int:
        if self.settings.workers is not None:
            if self.settings.workers < 1:
                raise ValueError("--ray-workers must be at least 1")
            return self.settings.workers
        return max(1, self.session.gpus())

    # -- the local lane --------------------------------------------------------------------------------
    def _local_loop(self) -> None:
        """Hand claimed network-bound prompts to the in-process worker, one at a time: the next one
        once the previous one parked on the network lane or finished (the GPU gate is free)."""
        while True:
            job = self._local_inbox.get()
            if job is None:
                return
            try:
                if self.local.run_claimed(job):
                    while not self._stopping.is_set() and not self.local.gate.wait_free(0.25):
                        pass
            except Exception:
                log.exception("local lane failed on %s", job.prompt_id)
            finally:
                self._local_busy = False
                self.wake()
