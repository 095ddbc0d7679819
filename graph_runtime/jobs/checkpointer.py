"""Background WAL checkpoints for the job store."""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


class WalCheckpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own thread and connection.

    Why: a checkpoint copies the WAL into the database file and fsyncs it.  Done in-line
    (SQLite's default, every 1000 pages) it lands on whichever enqueue/claim/finish
    crossed the threshold, holding the store lock through an fsync; measured, it cost
    about a third of the store's throughput.  A PASSIVE checkpoint never blocks writers
    and the sqlite3 module releases the GIL while it runs.
    """

    def __init__(self, db_path: Path, busy_timeout_s: float) -> None:
        self._db_path = db_path
        self._busy_timeout_s = busy_timeout_s
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"job-store-checkpoint:{db_path.name}", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(
            str(self._db_path), timeout=self._busy_timeout_s, isolation_level=None
        )
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    logger.warning("job store checkpoint failed", exc_info=True)
        finally:
            conn.close()
