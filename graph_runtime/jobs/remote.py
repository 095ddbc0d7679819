"""Durable records of remote jobs (paid work started at a provider) so a crash never pays twice.

A network-bound node (a video provider call) starts a job on someone else's machine and waits
minutes for it.  If this server dies meanwhile, the prompt is requeued at start-up (see
:mod:`graph_runtime.jobs.store`); when it runs again the node must pick the *same* remote job up
again instead of submitting (and paying for) a new one.  This table is what makes that possible.

One row per (prompt_id, node_id, call_index) — ``call_index`` numbers the remote jobs one node
starts in one run (a node mapped over a list starts one per item, always in the same order)::

    begin ──────────────> submitting ──accepted──> submitted ──ended──> succeeded | failed | cancelled
    (before the POST)     (POST in flight)         (remote id known)

Semantics
    * :meth:`RemoteJobStore.begin` is called *before* the submit request is sent and returns the
      existing row when there is one: that is how a resumed run learns it has a job already.
    * :meth:`RemoteJobStore.accepted` is called the moment the provider answers the submit with a
      job id, and commits before returning: from then on no restart submits that job again.
    * A row left in ``submitting`` means the process died while the POST was in flight: the
      provider may or may not have the job.  Where the provider honours an idempotency key (sent
      with every submit, derived from prompt id, node id and call index) or can be asked for a job
      by our own id (Kling's ``external_task_id``), the resumed run recovers it; elsewhere it
      submits again — a window of one round trip, the best a provider without idempotency allows.
    * Rows belong to the prompt's run: :meth:`forget` deletes them when the prompt finishes (any
      outcome), :meth:`prune` at start-up deletes rows of prompts no longer pending or running.

Crash semantics and concurrency
    Same discipline as the job store: SQLite in WAL mode, ``synchronous=NORMAL`` (a committed
    transaction survives a process crash, only an OS crash can lose the last commits), every state
    change is one short ``BEGIN IMMEDIATE`` transaction on one connection guarded by one lock.
    The table lives in the job store's file (``jobs.sqlite3``) so one file holds all durable state;
    it has its own connection and does not touch the job store's schema version.  Calls are fast
    (well under a millisecond) and may be made from the network lane's event loop thread.
    The store remembers which prompts have records (read at open, kept up to date by its own
    writes; one process owns the file, as with the job store), so the per-prompt calls every
    prompt makes (:meth:`for_prompt` when it starts, :meth:`forget` when it ends) touch SQLite only
    for the few prompts that started remote jobs.
    ``":memory:"`` gives a non-durable store with the same behaviour (command-line runs, tests).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS remote_jobs (
    prompt_id       TEXT    NOT NULL,
    node_id         TEXT    NOT NULL,
    call_index      INTEGER NOT NULL,
    provider        TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN
                        ('submitting','submitted','succeeded','failed','cancelled')),
    remote_id       TEXT,
    handle          TEXT    NOT NULL DEFAULT '{}',   -- JSON: what polling/cancel/download need
    idempotency_key TEXT    NOT NULL,
    created_at      REAL    NOT NULL,                -- epoch seconds
    submitted_at    REAL,
    updated_at      REAL    NOT NULL,
    PRIMARY KEY (prompt_id, node_id, call_index)
)
"""

STATES = ("submitting", "submitted", "succeeded", "failed", "cancelled")
_COLUMNS = ("prompt_id, node_id, call_index, provider, state, remote_id, handle, idempotency_key, created_at, "
            "submitted_at, updated_at")


@dataclass(frozen=True)
class RemoteJob:
    """One remote job record (a snapshot)."""

    prompt_id: str
    node_id: str
    call_index: int
    provider: str
    state: str
    remote_id: str | None
    handle: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str = ""
    created_at: float = 0.0
    submitted_at: float | None = None
    updated_at: float = 0.0

    @property
    def accepted(self) -> bool:
        """The provider has the job (a remote id is known)."""
        return self.remote_id is not None and self.state != "submitting"


def _row(row: tuple) -> RemoteJob:
    (prompt_id, node_id, call_index, provider, state, remote_id, handle, key, created, submitted, updated) = row
    return RemoteJob(prompt_id, node_id, int(call_index), provider, state, remote_id, json.loads(handle), key,
                     created, submitted, updated)


class RemoteJobStore:
    """Thread-safe table of remote jobs; see the module docstring."""

    def __init__(self, db_path: Path | str, *, busy_timeout_s: float = 10.0) -> None:
        self.db_path = db_path
        if db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._closed = False
        self._conn = sqlite3.connect(str(db_path), timeout=busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if db_path != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._lock, self._tx() as conn:
            conn.execute(SCHEMA)
            self._prompts_with_records: set[str] = {
                pid for (pid,) in conn.execute("SELECT DISTINCT prompt_id FROM remote_jobs")}

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (the caller holds the lock), as in the job store."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _check_open(self) -> None:
        if self._closed:
            raise sqlite3.ProgrammingError("remote job store is closed")

    def _get_locked(self, prompt_id: str, node_id: str, call_index: int) -> RemoteJob | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM remote_jobs WHERE prompt_id = ? AND node_id = ?"
                                 " AND call_index = ?", (prompt_id, node_id, call_index)).fetchone()
        return _row(row) if row else None

    # -- writes -----------------------------------------------------------------------------------
    def begin(self, prompt_id: str, node_id: str, call_index: int, provider: str, idempotency_key: str) -> RemoteJob:
        """Record that a submit is about to be sent; returns the existing record if there is one."""
        now = time.time()
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                conn.execute("INSERT OR IGNORE INTO remote_jobs (prompt_id, node_id, call_index, provider, state,"
                             " idempotency_key, created_at, updated_at) VALUES (?,?,?,?,'submitting',?,?,?)",
                             (prompt_id, node_id, call_index, provider, idempotency_key, now, now))
                job = self._get_locked(prompt_id, node_id, call_index)
            self._prompts_with_records.add(prompt_id)
        assert job is not None
        return job

    def accepted(self, prompt_id: str, node_id: str, call_index: int, remote_id: str,
                 handle: dict[str, Any]) -> RemoteJob:
        """The provider accepted the submit: store its job id (committed before returning)."""
        now = time.time()
        text = json.dumps(handle, separators=(",", ":"))
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                cur = conn.execute("UPDATE remote_jobs SET state = 'submitted', remote_id = ?, handle = ?,"
                                   " submitted_at = COALESCE(submitted_at, ?), updated_at = ?"
                                   " WHERE prompt_id = ? AND node_id = ? AND call_index = ?",
                                   (remote_id, text, now, now, prompt_id, node_id, call_index))
                if cur.rowcount != 1:
                    raise KeyError((prompt_id, node_id, call_index))
                job = self._get_locked(prompt_id, node_id, call_index)
        assert job is not None
        return job

    def ended(self, prompt_id: str, node_id: str, call_index: int, state: str) -> None:
        """The remote job reached a terminal state (kept until the prompt is forgotten)."""
        if state not in ("succeeded", "failed", "cancelled"):
            raise ValueError(f"not a terminal state: {state}")
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                conn.execute("UPDATE remote_jobs SET state = ?, updated_at = ? WHERE prompt_id = ? AND node_id = ?"
                             " AND call_index = ?", (state, time.time(), prompt_id, node_id, call_index))

    def forget(self, prompt_id: str) -> int:
        """Delete the records of a finished prompt; returns how many."""
        with self._lock:
            self._check_open()
            if prompt_id not in self._prompts_with_records:
                return 0
            with self._tx() as conn:
                count = conn.execute("DELETE FROM remote_jobs WHERE prompt_id = ?", (prompt_id,)).rowcount
            self._prompts_with_records.discard(prompt_id)
            return count

    def prune(self, live_prompt_ids: Iterable[str]) -> int:
        """Delete records of prompts not in ``live_prompt_ids`` (call at start-up, after recovery)."""
        live = set(live_prompt_ids)
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                dead = [pid for (pid,) in conn.execute("SELECT DISTINCT prompt_id FROM remote_jobs")
                        if pid not in live]
                n = 0
                for pid in dead:
                    n += conn.execute("DELETE FROM remote_jobs WHERE prompt_id = ?", (pid,)).rowcount
            self._prompts_with_records.difference_update(dead)
        return n

    # -- reads ------------------------------------------------------------------------------------
    def get(self, prompt_id: str, node_id: str, call_index: int = 0) -> RemoteJob | None:
        with self._lock:
            self._check_open()
            return self._get_locked(prompt_id, node_id, call_index)

    def for_prompt(self, prompt_id: str) -> list[RemoteJob]:
        with self._lock:
            self._check_open()
            if prompt_id not in self._prompts_with_records:
                return []
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM remote_jobs WHERE prompt_id = ?"
                                      " ORDER BY node_id, call_index", (prompt_id,)).fetchall()
        return [_row(r) for r in rows]

    def journal(self, prompt_id: str, node_id: str) -> "RemoteJobJournal":
        return RemoteJobJournal(self, prompt_id, node_id)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


class RemoteJobJournal:
    """The remote-job records of one node in one prompt run (what a node sees as ``ctx.remote_jobs``).

    :meth:`next_call` numbers the remote jobs the node starts in this run, in order; a resumed run
    makes the same calls in the same order, so it finds the same records.
    """

    def __init__(self, store: RemoteJobStore, prompt_id: str, node_id: str) -> None:
        self.store = store
        self.prompt_id = prompt_id
        self.node_id = node_id
        self._calls = 0
        self._lock = threading.Lock()

    def next_call(self) -> int:
        with self._lock:
            index = self._calls
            self._calls += 1
            return index

    def idempotency_key(self, call_index: int) -> str:
        return f"genesis-{self.prompt_id}-{self.node_id}-{call_index}"

    def get(self, call_index: int) -> RemoteJob | None:
        return self.store.get(self.prompt_id, self.node_id, call_index)

    def begin(self, call_index: int, provider: str) -> RemoteJob:
        return self.store.begin(self.prompt_id, self.node_id, call_index, provider, self.idempotency_key(call_index))

    def accepted(self, call_index: int, remote_id: str, handle: dict[str, Any]) -> RemoteJob:
        return self.store.accepted(self.prompt_id, self.node_id, call_index, remote_id, handle)

    def ended(self, call_index: int, state: str) -> None:
        self.store.ended(self.prompt_id, self.node_id, call_index, state)
