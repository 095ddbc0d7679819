"""Reusable threads that run claimed prompts, each keeping its event loop between prompts.

Why: a prompt may park on the network lane (a remote video job) while the next prompt takes the
GPU, so every running prompt needs a thread of its own. Starting a fresh thread and a fresh
asyncio event loop for every prompt cost about 0.6 ms — a third of a trivial prompt's whole run —
so threads are kept: an idle thread takes the next prompt, a new thread starts only when every
thread is busy (several prompts parked at once). The executor keeps one event loop per thread
(``Executor.execute``), so a kept thread also keeps its loop; ``on_exit`` closes it when the
thread ends at :meth:`close`.

Concurrency: ``submit`` reserves an idle thread (or starts one) under one lock and puts the task
on a shared queue, so every queued task has a thread bound to take it; a thread counts itself
idle again only after its task returned. Tasks must not raise (the worker's task catches its own
errors); one that does is logged and the thread goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)

Task = Callable[[], None]


class PromptThreads:
    """A growing set of daemon threads that run submitted tasks; idle threads are reused."""

    def __init__(self, name: str = "genesis-prompt", on_exit: Callable[[], None] | None = None) -> None:
        self._name = name
        self._on_exit = on_exit
        self._lock = threading.Condition()  # notified whenever a thread becomes idle
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, task: Task) -> None:
        """Run ``task`` on an idle thread, or on a new one when all are busy."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the prompt threads are closed")
            if self._idle:
                self._idle -= 1  # that idle thread is now bound to take a task
                self._tasks.put(task)
                return
            self._tasks.put(task)
            thread = threading.Thread(target=self._serve, name=f"{self._name}-{len(self._threads) + 1}",
                                      daemon=True)
            self._threads.append(thread)
        thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def idle(self) -> int:
        """How many threads wait for a task now."""
        with self._lock:
            return self._idle

    def wait_all_idle(self, timeout: float) -> bool:
        """Block until no thread runs a task (False when ``timeout`` s passed first)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._idle == len(self._threads), timeout)

    def size(self) -> int:
        """How many threads were started (at most the number of prompts ever running at once)."""
        with self._lock:
            return len(self._threads)

    def close(self, timeout: float = 10.0) -> None:
        """Let every thread finish its task, then end it (each waited for up to ``timeout`` s)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._tasks.put(None)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _serve(self) -> None:
        try:
            while True:
                task = self._tasks.get()
                if task is None:
                    return
                try:
                    task()
                except Exception:  # pragma: no cover - the worker's tasks catch their own errors
                    log.exception("a prompt task raised")
                with self._lock:
                    self._idle += 1
                    self._lock.notify_all()
        finally:
            if self._on_exit is not None:
                self._on_exit()
