"""Calls from other threads onto one asyncio event loop, with one wake-up per burst.

Why: ``loop.call_soon_threadsafe`` writes to the loop's wake-up socket on every call, and each
write is a system call that can hand the CPU (and the GIL) to another thread.  A prompt's end
alone sends several things to the loop from the worker thread (WebSocket events, the queue
status, the completion that ``/api/run`` and the webhooks wait for), and an accepted submission
two more from the write thread (its status, its answer).  Posted through one mailbox, whatever
arrives before the loop runs is handled in one turn after one wake-up.

Order: callbacks run in the order they were posted, whatever thread posted them; at most
:data:`TURN` run per loop iteration, so a long burst (thousands of progress events) never starves
the loop's other tasks (the WebSocket senders among them).
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable

log = logging.getLogger(__name__)

TURN = 64
"""Callbacks run per loop iteration before yielding to the loop's other work."""


class LoopMailbox:
    """Thread-safe ``post(fn, *args)`` onto the bound loop (see the module docstring)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake_pending = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Deliver onto ``loop`` from now on (None: drop posts; the server is stopping)."""
        self._loop = loop

    def post(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop soon; False when no loop is bound or it is closed."""
        loop = self._loop
        if loop is None:
            return False
        self._inbox.append((fn, args))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # the loop is closed: the server is shutting down
                self._wake_pending = False
                return False
        return True

    def _run(self) -> None:
        # Clear the flag first: anything posted from now on schedules another wake-up unless
        # this turn reschedules itself below.
        self._wake_pending = False
        inbox = self._inbox
        for _ in range(TURN):
            if not inbox:
                return
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("mailbox callback %r failed", fn)
        if inbox and self._loop is not None:
            self._wake_pending = True
            self._loop.call_soon(self._run)  # on the loop already: no wake-up needed
