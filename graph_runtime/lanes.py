"""Lanes: network-bound nodes never hold the GPU queue.

A video provider takes minutes to render.  Run inline, a prompt waiting on it would keep the one
worker busy and every image prompt queued behind it would wait.  This module keeps the two kinds
of work apart; the executor and the service use it through a narrow interface (:class:`Lanes`).

Design
    * **The network lane** (:class:`NetworkLane`) is one asyncio event loop on its own thread.
      Every async node declared ``RESOURCE = Resource.NETWORK`` runs there, whatever prompt it
      belongs to.  Polling a provider costs microseconds of CPU, so one thread serves hundreds of
      remote jobs.  A per-key limit (the node class's ``NETWORK_KEY``, default its class name;
      provider nodes share their provider's key) keeps at most N jobs in flight per provider
      (default 4, ``--network-concurrency``); the rest wait in arrival order (asyncio semaphores
      wake waiters first in, first out).
    * **The GPU gate** (:class:`GpuGate`) is held by the one prompt allowed to run other nodes
      (GPU or CPU work) right now.  The worker hands it to each prompt it claims; a prompt whose
      only remaining work is waiting on the network lane *parks*: it gives the gate back and the
      worker claims the next prompt.  When a parked prompt's network node finishes and it has
      other nodes to run (``SaveVideo``), it takes the gate again, ahead of prompts not yet
      claimed (the worker only claims when nobody holds or waits for the gate), so a finished
      video is saved right after the current image prompt.
    * **A prompt is "running" from claim to finish**, parked or not: the job store marks it
      running at claim, so the queue panel and ``/api/jobs`` show it as running while it waits on
      the provider.  Each claimed prompt runs on its own thread (its own event loop); parked
      prompts' threads only wait.
    * **Durable remote jobs** (:mod:`graph_runtime.jobs.remote`): each network node gets a journal
      (``ctx.remote_jobs``) in which the provider's job id is committed the moment a submit is
      accepted.  A prompt requeued after a crash finds its accepted remote jobs through
      :meth:`Lanes.resumable_nodes`; the executor then runs those nodes *without their inputs*
      (their ancestors are not planned, like cached nodes), and the nodes resume polling instead
      of submitting.  Records are forgotten when the prompt finishes.
    * **Interrupts** reach a network node through its context as always (it cancels its remote
      job).  A prompt waiting for the gate gives up when interrupted.  Stopping the server does
      not interrupt parked prompts: their remote jobs keep running at the provider and the
      prompts resume after the restart.

Narrow interface: the executor calls :meth:`Lanes.is_network`, :meth:`Lanes.run_network`,
:meth:`Lanes.park` / :meth:`Lanes.unpark`, :meth:`Lanes.journal` and :meth:`Lanes.resumable_nodes`;
the service owns the object, hands the gate to each claimed prompt (:meth:`GpuGate.acquire`)
and takes it back (:meth:`Lanes.forget`) only once the prompt's history is written, so prompts
that run one after the other also finish in that order.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from typing import Any, Awaitable, Callable, TypeVar

from graph_runtime.context import Interrupted
from graph_runtime.jobs.remote import RemoteJobJournal, RemoteJobStore
from graph_runtime.schema import NodeDefinition, Resource

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_NETWORK_CONCURRENCY = 4
SLOT_POLL = 0.25


class NetworkLane:
    """An event loop on its own thread for network-bound coroutines, with per-key concurrency limits."""

    def __init__(self, per_key_limit: int = DEFAULT_NETWORK_CONCURRENCY) -> None:
        if per_key_limit < 1:
            raise ValueError("per_key_limit must be >= 1")
        self.per_key_limit = per_key_limit
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="genesis-network-lane", daemon=True)
        self._ready = threading.Event()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._counts: dict[str, list[int]] = {}  # key -> [in flight, waiting]
        self._thread_id: int | None = None
        self._started = False
        self._lock = threading.Lock()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._thread_id = threading.get_ident()
        self._ready.set()
        self._loop.run_forever()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self._thread.start()
        self._ready.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; coroutines still running are cancelled (remote jobs are not: see module doc)."""
        with self._lock:
            if not self._started or not self._thread.is_alive():
                return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def run(self, factory: Callable[[], Awaitable[T]], key: str,
            interrupted: Callable[[], bool] = lambda: False) -> concurrent.futures.Future[T]:
        """Run ``factory()`` on the lane once a slot for ``key`` is free; a thread-safe future of its result.

        While it waits for a slot, ``interrupted()`` is checked every ``SLOT_POLL`` seconds and
        :class:`~graph_runtime.context.Interrupted` raised when it turns true.
        """
        self.start()
        return asyncio.run_coroutine_threadsafe(self._limited(factory, key, interrupted), self._loop)

    async def _limited(self, factory: Callable[[], Awaitable[T]], key: str, interrupted: Callable[[], bool]) -> T:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = asyncio.Semaphore(self.per_key_limit)
        counts = self._counts.setdefault(key, [0, 0])
        counts[1] += 1
        try:
            # one acquire() kept waiting (cancelling and retrying would lose the place in line)
            acquire = asyncio.ensure_future(slot.acquire())
            while not (await asyncio.wait({acquire}, timeout=SLOT_POLL))[0]:
                if interrupted():
                    acquire.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        if await acquire:
                            slot.release()
                    raise Interrupted(f"interrupted while waiting for a free {key} slot")
        finally:
            counts[1] -= 1
        counts[0] += 1
        try:
            return await factory()
        finally:
            counts[0] -= 1
            slot.release()

    def load(self) -> dict[str, tuple[int, int]]:
        """(in flight, waiting) per key."""
        return {k: (v[0], v[1]) for k, v in self._counts.items()}

    def cpu_seconds(self) -> float:
        """CPU time the lane thread has used (what polling costs)."""
        if self._thread_id is None:
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self._thread_id))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return 0.0


class GpuGate:
    """Who may run non-network nodes now: one prompt; waiters that resume a parked prompt go first.

    Thread-safe.  ``acquire`` blocks; it re-checks ``interrupted`` every ``poll`` seconds so an
    interrupted prompt stops waiting.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: str | None = None
        self._waiters: list[tuple[int, int, str]] = []  # (priority class, arrival, prompt id)
        self._arrivals = 0

    @property
    def holder(self) -> str | None:
        return self._holder

    def acquire(self, prompt_id: str, *, resuming: bool = False, interrupted: Callable[[], bool] = lambda: False,
                poll: float = 0.1) -> bool:
        """Take the gate (False if ``interrupted`` became true while waiting)."""
        with self._cond:
            if self._holder == prompt_id:
                return True
            self._arrivals += 1
            ticket = (0 if resuming else 1, self._arrivals, prompt_id)
            self._waiters.append(ticket)
            try:
                while not (self._holder is None and min(self._waiters) == ticket):
                    if interrupted():
                        return False
                    self._cond.wait(poll)
                self._holder = prompt_id
                return True
            finally:
                self._waiters.remove(ticket)
                self._cond.notify_all()

    def release(self, prompt_id: str) -> None:
        with self._cond:
            if self._holder == prompt_id:
                self._holder = None
                self._cond.notify_all()

    def wait_free(self, timeout: float) -> bool:
        """True once nobody holds or waits for the gate (the worker may claim a new prompt)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._holder is not None or self._waiters:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


class Lanes:
    """The network lane, the GPU gate and the remote-job records of one runtime."""

    def __init__(self, remote_jobs: RemoteJobStore | None = None, *,
                 network_concurrency: int = DEFAULT_NETWORK_CONCURRENCY) -> None:
        self.network = NetworkLane(network_concurrency)
        self.gate = GpuGate()
        self.remote_jobs = remote_jobs if remote_jobs is not None else RemoteJobStore(":memory:")
        self._park_listeners: list[Callable[[str], None]] = []

    # -- executor side --------------------------------------------------------------------------
    @staticmethod
    def is_network(definition: NodeDefinition) -> bool:
        return definition.resource is Resource.NETWORK and definition.is_async

    @staticmethod
    def network_key(definition: NodeDefinition) -> str:
        return str(getattr(definition.node_class, "NETWORK_KEY", None) or definition.class_type)

    async def run_network(self, definition: NodeDefinition, factory: Callable[[], Awaitable[T]],
                          interrupted: Callable[[], bool] = lambda: False) -> T:
        """Await ``factory()`` run on the network lane (from the prompt's own event loop)."""
        return await asyncio.wrap_future(self.network.run(factory, self.network_key(definition), interrupted))

    def park(self, prompt_id: str) -> bool:
        """The prompt only waits on the network lane: give the gate to the next prompt."""
        if self.gate.holder != prompt_id:
            return False
        self.gate.release(prompt_id)
        log.debug("prompt %s parked on the network lane", prompt_id)
        for listener in list(self._park_listeners):
            listener(prompt_id)
        return True

    def on_park(self, listener: Callable[[str], None]) -> None:
        """``listener(prompt_id)`` right after a prompt parked (the runner lets another thread claim)."""
        self._park_listeners.append(listener)

    async def unpark(self, prompt_id: str, interrupted: Callable[[], bool]) -> bool:
        """Take the gate back before running non-network nodes (False when interrupted first)."""
        if self.gate.holder == prompt_id:
            return True
        return await asyncio.to_thread(self.gate.acquire, prompt_id, resuming=True, interrupted=interrupted)

    def journal(self, prompt_id: str, node_id: str) -> RemoteJobJournal:
        return self.remote_jobs.journal(prompt_id, node_id)

    def resumable_nodes(self, prompt_id: str) -> set[str]:
        """Nodes of this prompt whose single remote job the provider already accepted (after a restart)."""
        by_node: dict[str, list[Any]] = {}
        for record in self.remote_jobs.for_prompt(prompt_id):
            by_node.setdefault(record.node_id, []).append(record)
        return {nid for nid, records in by_node.items()
                if len(records) == 1 and records[0].call_index == 0 and records[0].accepted
                and records[0].state in ("submitted", "succeeded")}

    # -- service side ---------------------------------------------------------------------------
    def forget(self, prompt_id: str) -> None:
        self.remote_jobs.forget(prompt_id)
        self.gate.release(prompt_id)

    def close(self) -> None:
        self.network.stop()
