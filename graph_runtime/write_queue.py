"""The runtime's writes from the web layer: one thread, arrival order, submissions in batches.

Why one thread: ``POST /prompt`` converts, validates and writes SQLite, which must not run on the
event loop (:mod:`graph_runtime.async_runtime`).  Running the writes one at a time in arrival
order keeps ComfyUI's semantics (a prompt posted before a ``/queue`` delete is queued before the
delete looks for it) and the queue numbers in the order the requests came.

Why batches: when many prompts arrive at once (an app posting a batch, a load balancer draining),
the submissions that wait together are validated one by one and enqueued in one SQLite
transaction (:meth:`Runtime.submit_many`), and their answers go back to the event loop in one
hand-off.  On a busy 2-core machine every commit and every cross-thread wake-up costs context
switches (each one can deschedule the thread holding the GIL), so a batch of n costs about what
one submission costs.  A lone submission is not delayed: the thread takes whatever is waiting
when it wakes, never waits for more.

Concurrency: the event loop appends items under a lock and notifies the thread; the thread takes
a run of consecutive submissions (or one other write), runs it, and resolves the items' asyncio
futures with one hand-off per batch (through the loop's mailbox when one is given, so it shares a
wake-up with the status event the submission emitted).  An item whose awaiting coroutine was
cancelled still runs (as ``run_in_executor`` would); its answer is dropped.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from graph_runtime.loop_mailbox import LoopMailbox

if TYPE_CHECKING:
    from graph_runtime.service import Runtime, SubmitRequest, SubmitResult

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 256
"""Most submissions validated and enqueued in one transaction."""


@dataclass
class _Item:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    request: "SubmitRequest | None" = None
    call: Callable[[], Any] | None = None
    outcome: tuple[bool, Any] = field(default=(False, None))
    """(ok, value): the result, or the exception raised."""


class WriteQueue:
    """Runs :meth:`Runtime.submit_many` batches and other writes on one thread (module docstring)."""

    def __init__(self, runtime: "Runtime", *, name: str = "genesis-submit", max_batch: int = MAX_BATCH,
                 mailbox: LoopMailbox | None = None) -> None:
        self._runtime = runtime
        self._mailbox = mailbox
        self._max_batch = max_batch
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def submit(self, request: "SubmitRequest") -> "SubmitResult":
        """Queue one prompt (batched with the submissions waiting beside it)."""
        return await self._put(request=request)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run any other write (cancel, delete, clear) in arrival order."""
        return await self._put(call=functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Stop taking items; those not started are cancelled, the running batch finishes."""
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify()
        for item in left:
            self._deliver(item.loop, [item], cancel=True)

    async def _put(self, **what: Any) -> Any:
        loop = asyncio.get_running_loop()
        item = _Item(loop, loop.create_future(), **what)
        with self._cond:
            if self._closed:
                raise RuntimeError("the write queue is closed")
            self._items.append(item)
            self._cond.notify()
        return await item.future

    # -- the write thread ------------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        """The next batch: consecutive submissions, or one other write (None once closed)."""
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._items.popleft()
            batch = [first]
            if first.request is not None:
                while (self._items and self._items[0].request is not None
                       and len(batch) < self._max_batch):
                    batch.append(self._items.popleft())
            return batch

    def _serve(self) -> None:
        while (batch := self._take()) is not None:
            try:
                if batch[0].request is not None:
                    results = self._runtime.submit_many([item.request for item in batch])  # type: ignore[misc]
                    for item, result in zip(batch, results):
                        item.outcome = (True, result)
                else:
                    batch[0].outcome = (True, batch[0].call())  # type: ignore[misc]
            except Exception as exc:  # each waiter gets the error; the thread goes on
                for item in batch:
                    item.outcome = (False, exc)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
            for item in batch:
                by_loop.setdefault(item.loop, []).append(item)
            for loop, items in by_loop.items():
                self._deliver(loop, items)

    def _deliver(self, loop: asyncio.AbstractEventLoop, items: list[_Item], *, cancel: bool = False) -> None:
        def resolve() -> None:
            for item in items:
                if item.future.done():
                    continue  # the request went away meanwhile
                ok, value = item.outcome
                if cancel:
                    item.future.cancel()
                elif ok:
                    item.future.set_result(value)
                else:
                    item.future.set_exception(value)

        mailbox = self._mailbox
        if mailbox is not None and mailbox.loop is loop and mailbox.post(resolve):
            return
        try:
            loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass
