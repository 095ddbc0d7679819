"""The one async façade the web layer talks to: every call that touches SQLite, the disk,
hashing or a CPU-heavy conversion runs on a thread pool, never on the event loop.

Why a façade: an aiohttp event loop serves every socket of the server.  ``POST /prompt``
converts a UI workflow, validates it (folder listings, custom validators), writes SQLite and
wakes the worker; done on the loop, one slow disk or one big workflow stalls every WebSocket
and every other request.  Routes therefore never see the :class:`~graph_runtime.jobs.JobStore`
or the :class:`~graph_runtime.service.Runtime`; they await methods of :class:`AsyncRuntime`.

Writes and reads are apart, so cheap reads are not stuck behind slow submissions: writes
(submissions, with their conversion and validation, the expensive part; cancels, deletes) run on
one thread in arrival order, submissions that wait together in one transaction
(:mod:`graph_runtime.write_queue`); reads (store queries, listings) on a small pool.

Waiting for a job (``POST /api/run``): :meth:`AsyncRuntime.wait` registers a future before it
reads the job's state, and the runtime's completion listener resolves it from the worker
thread through the loop's mailbox (:mod:`graph_runtime.loop_mailbox`, shared with the WebSocket
hub: one wake-up for a prompt's last events and its completion), so no completion can slip
between the two.

Ownership (multi-user mode): methods take ``owner``; ``None`` means every user's jobs (single
user, or an admin), a name narrows reads and removals to that user's jobs.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from graph_runtime.jobs import Job, JobPage, JobSort, JobStatus, QueueSnapshot
from graph_runtime.service import JobOutcome, Runtime, SubmitRequest, SubmitResult
from graph_runtime.loop_mailbox import LoopMailbox
from graph_runtime.write_queue import WriteQueue

log = logging.getLogger(__name__)

T = TypeVar("T")
_ENDED_REMEMBERED = 4096
FinishedCallback = Callable[[JobOutcome], None]
QueuedCallback = Callable[[SubmitResult], None]


@dataclass(frozen=True)
class ReadyCheck:
    """One line of ``/ready``: what was checked, whether it holds, why not."""

    name: str
    ok: bool
    detail: str = ""


class AsyncRuntime:
    """Async access to one :class:`Runtime` (see the module docstring)."""

    def __init__(self, runtime: Runtime, *, read_workers: int = 4, mailbox: LoopMailbox | None = None) -> None:
        self.runtime = runtime
        self._mailbox = mailbox if mailbox is not None else LoopMailbox()
        self._writes = WriteQueue(runtime, mailbox=self._mailbox)
        self._read_pool = ThreadPoolExecutor(read_workers, thread_name_prefix="genesis-read")
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._live: set[str] = set()
        """Jobs queued through this façade that have not left the queue (seen on the loop): a
        wait for one of them needs no first store read (``POST /api/run`` waits on its own job)."""
        self._ended: OrderedDict[str, None] = OrderedDict()
        """The last jobs that left the queue (a completion may reach the loop before the answer to
        the submission that queued it)."""
        self._on_finished: list[FinishedCallback] = []
        self._on_queued: list[QueuedCallback] = []
        runtime.add_completion_listener(self._completed_threadsafe)

    # -- lifecycle -----------------------------------------------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._mailbox.bind(loop)

    def close(self) -> None:
        self.runtime.remove_completion_listener(self._completed_threadsafe)
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self._waiters.clear()
        self._writes.close()
        self._read_pool.shutdown(wait=False, cancel_futures=True)
        self._mailbox.bind(None)

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, lambda: fn(*args, **kwargs))

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._writes.call(fn, *args, **kwargs)

    # -- node definitions and files ------------------------------------------------------------
    async def object_info(self) -> dict[str, dict[str, Any]]:
        return await self._read(self.runtime.object_info)

    async def node_info(self, class_type: str) -> dict[str, Any] | None:
        return await self._read(self.runtime.node_info, class_type)

    async def list_models(self, folder: str) -> list[str]:
        return await self._read(self.runtime.paths.list_models, folder)

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Any other blocking call that belongs to serving a request (file reads, stats)."""
        return await self._read(fn, *args, **kwargs)

    # -- queueing ------------------------------------------------------------------------------
    async def submit(self, prompt: Any, *, owner: str | None = None, **kwargs: Any) -> SubmitResult:
        """Convert, validate and enqueue off the loop (see :meth:`Runtime.submit`)."""
        result = await self._writes.submit(SubmitRequest(prompt, owner=owner, **kwargs))
        if result.ok:
            if result.prompt_id not in self._ended:
                self._live.add(result.prompt_id)  # type: ignore[arg-type]
            for callback in self._on_queued:
                callback(result)
        return result

    def on_queued(self, callback: QueuedCallback) -> None:
        """``callback(result)`` on the event loop for every prompt accepted into the queue."""
        self._on_queued.append(callback)

    @property
    def queue_remaining(self) -> int:
        """Pending + running as of the last queue change (no SQLite read)."""
        return self.runtime.queue_remaining

    async def count_remaining(self) -> int:
        return await self._read(self.runtime.store.queue_remaining)

    async def queue(self, *, owner: str | None = None) -> QueueSnapshot:
        return await self._read(self.runtime.store.queue_snapshot, owner=owner)

    async def get(self, prompt_id: str, *, owner: str | None = None) -> Job | None:
        """The job, or None when unknown or another owner's."""
        job = await self._read(self.runtime.store.get, prompt_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    async def history(self, *, max_items: int | None, offset: int | None,
                      owner: str | None = None) -> JobPage:
        """ComfyUI's ``GET /history`` window: oldest first; without an offset the last ``max_items``."""
        def read() -> JobPage:
            store = self.runtime.store
            start = offset
            if start is None or start < 0:
                finished = [s for s in JobStatus if s.is_finished]
                start = max(0, store.count(finished, owner=owner) - max_items) if max_items is not None else 0
            return store.history(max_items=max_items, offset=start, newest_first=False, owner=owner)

        return await self._read(read)

    async def list_jobs(self, statuses: list[JobStatus] | None, *, limit: int | None, offset: int,
                        sort: JobSort, descending: bool, owner: str | None = None) -> JobPage:
        return await self._read(self.runtime.store.list_jobs, statuses, limit=limit, offset=offset, sort=sort,
                                descending=descending, owner=owner)

    # -- control -------------------------------------------------------------------------------
    async def interrupt(self, prompt_id: str | None = None, *, owner: str | None = None) -> bool:
        return await self._read(self.runtime.interrupt, prompt_id, owner=owner)

    async def cancel(self, prompt_ids: list[str], *, owner: str | None = None) -> dict[str, list[str]]:
        return await self._write(self.runtime.cancel, prompt_ids, owner=owner)

    async def delete_pending(self, prompt_ids: list[str], *, owner: str | None = None) -> list[str]:
        return await self._write(self.runtime.delete_pending, prompt_ids, owner=owner)

    async def clear_pending(self, *, owner: str | None = None) -> list[str]:
        return await self._write(self.runtime.clear_pending, owner=owner)

    async def delete_history(self, prompt_ids: list[str], *, owner: str | None = None) -> list[str]:
        return await self._write(self.runtime.store.delete_history, prompt_ids, owner=owner)

    async def clear_history(self, *, owner: str | None = None) -> int:
        return await self._write(self.runtime.store.clear_history, owner=owner)

    async def annotate(self, prompt_id: str, key: str, value: Any) -> bool:
        """Add a note to a job's history entry (webhook deliveries)."""
        return await self._write(self.runtime.store.annotate, prompt_id, key, value)

    async def free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        await self._read(self.runtime.free, unload_models=unload_models, free_memory=free_memory)

    # -- completion ----------------------------------------------------------------------------
    def on_finished(self, callback: FinishedCallback) -> None:
        """``callback(outcome)`` on the event loop for every job that leaves the queue."""
        self._on_finished.append(callback)

    def _completed_threadsafe(self, outcome: JobOutcome) -> None:
        self._mailbox.post(self._completed, outcome)

    def _completed(self, outcome: JobOutcome) -> None:
        self._live.discard(outcome.prompt_id)
        self._ended[outcome.prompt_id] = None
        if len(self._ended) > _ENDED_REMEMBERED:
            self._ended.popitem(last=False)
        for fut in self._waiters.pop(outcome.prompt_id, ()):
            if not fut.done():
                fut.set_result(outcome)
        for callback in list(self._on_finished):
            try:
                callback(outcome)
            except Exception:
                log.exception("completion callback failed on %s", outcome.prompt_id)

    async def wait(self, prompt_id: str, timeout: float | None = None) -> Job | None:
        """The job once it has left the queue (finished, cancelled), or as it is at ``timeout``.

        None when the id is unknown or the job was removed while pending.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._waiters.setdefault(prompt_id, []).append(fut)
        try:
            if prompt_id not in self._live:  # not known to be queued: ask the store first
                job = await self._read(self.runtime.store.get, prompt_id)
                if job is None or job.status.is_finished:
                    return job
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout)
            except asyncio.TimeoutError:
                pass
            return await self._read(self.runtime.store.get, prompt_id)
        finally:
            waiting = self._waiters.get(prompt_id)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[prompt_id]

    # -- health --------------------------------------------------------------------------------
    async def ready(self) -> list[ReadyCheck]:
        """What ``/ready`` reports: the database takes writes, the worker lives, models are readable."""
        return await self._read(self._ready_checks)

    def _ready_checks(self) -> list[ReadyCheck]:
        checks = [ReadyCheck("worker", self.runtime.is_alive(), "" if self.runtime.is_alive()
                             else "the worker thread is not running")]
        try:
            self.runtime.store.check_writable()
            checks.append(ReadyCheck("database", True))
        except Exception as exc:  # any failure means "not ready", with the reason
            checks.append(ReadyCheck("database", False, f"{type(exc).__name__}: {exc}"))
        models = self.runtime.paths.models_dir
        readable = models.is_dir() and os.access(models, os.R_OK | os.X_OK)
        checks.append(ReadyCheck("models", readable, "" if readable else f"{models} is not a readable folder"))
        return checks

