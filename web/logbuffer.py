"""The server log as the frontend's terminal panel sees it (``/internal/logs``).

A :class:`logging.Handler` keeps the last lines in a ring buffer and pushes each new entry to
a callback (the WebSocket hub forwards it to sockets that subscribed).  It is attached to the
root logger for the life of one application and removed on shutdown.
"""
from __future__ import annotations

import logging
import shutil
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable

MAX_ENTRIES = 300


class LogBuffer(logging.Handler):
    def __init__(self, max_entries: int = MAX_ENTRIES, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.entries: deque[dict[str, str]] = deque(maxlen=max_entries)
        self.on_entry: Callable[[dict[str, str]], None] | None = None
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"t": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                     "m": self.format(record) + "\n"}
        except Exception:  # a broken record must never break the caller
            self.handleError(record)
            return
        self.entries.append(entry)
        callback = self.on_entry
        if callback is not None:
            callback(entry)

    def text(self) -> str:
        """ComfyUI's ``GET /internal/logs``: every buffered line as ``t - m``."""
        return "".join(f"{e['t']} - {e['m']}" for e in list(self.entries))

    def raw(self) -> dict[str, Any]:
        return {"entries": list(self.entries), "size": terminal_size()}

    def attach(self, logger: logging.Logger | None = None) -> None:
        (logger or logging.getLogger()).addHandler(self)

    def detach(self, logger: logging.Logger | None = None) -> None:
        (logger or logging.getLogger()).removeHandler(self)
        self.on_entry = None


def terminal_size() -> dict[str, int]:
    size = shutil.get_terminal_size((80, 24))
    return {"cols": size.columns, "rows": size.lines}
