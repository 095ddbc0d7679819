"""Durable prompt queue and history, kept in one SQLite file.

ComfyUI holds its queue and history in memory, so a restart (or a crash) loses every
queued prompt and every past result.  This store keeps both in a SQLite database (WAL
mode) so the server can be killed at any moment and come back with the same queue.

A job is one row of ``jobs`` (small, changing state) plus one row of ``job_payloads``
(the big JSON written once at enqueue), for its whole life::

    pending --claim_next--> running --finish--> succeeded | failed | interrupted | cancelled
    pending --cancel------> cancelled
    pending --delete_pending / clear_pending--> (rows removed)

Together they hold everything the queue/history/jobs routes need: the queue number,
priority, the validated API prompt, ``extra_data`` (client_id, extra_pnginfo, ...), the
output nodes to execute, status, the status messages (``[[type, data], ...]``), per-node
UI outputs and meta, error detail, timestamps, and how many times the job was started.
JSON values are stored as TEXT (``json.dumps``) and decoded lazily (see :class:`Job`).

Ordering
    The next job to run is the pending one with the highest ``priority``, then the
    lowest ``number``, then the earliest insertion.  ``number`` follows ComfyUI: a
    counter that increments on every enqueue that does not pass an explicit number.
    Unlike ComfyUI it does not restart at 0: on open it continues after the counter
    saved at the last clean close and after every number still in the database, so new
    work always queues behind old pending work.  ``front=True`` gives a number lower
    than every pending job's (so "queue front" really is first within its priority).
    ComfyUI has no priority; everything defaults to 0.

History
    Finished jobs are ordered by a completion sequence (``finish_seq``), not by wall
    clock time, so clock changes cannot reorder history.  At most ``max_history``
    finished jobs are kept (ComfyUI keeps 10000); the oldest are evicted first.

Secrets
    ``extra_data`` keys listed in :data:`SECRET_EXTRA_DATA_KEYS` (ComfyUI's comfy.org
    auth token and API key) are dropped before anything is written, so credentials never
    reach the disk.  ComfyUI strips the same keys from its history.

Crash semantics (what happens after ``kill -9`` and a restart)
    * Every state change (enqueue, claim, finish, cancel, delete) is its own committed
      transaction.  In WAL mode with ``synchronous=NORMAL`` a committed transaction is in
      the WAL (OS page cache) before ``commit`` returns, so it survives a process crash;
      only an OS crash or power loss can drop the last few commits.  We accept that
      trade for throughput (no fsync per prompt).
    * Pending jobs are untouched: same numbers, so the same order.  History is untouched.
    * :meth:`JobStore.recover_after_restart` must be called once at startup, before the
      worker starts claiming.  A job found ``running`` was cut off by the crash:
      - ``attempts`` counts how many times a job was started (``claim_next`` adds 1).
        If it is below ``max_attempts`` (default 2), the job goes back to ``pending`` at
        the FRONT of the queue (a number lower than every pending one, keeping the
        relative order of several such jobs) so the user's work is not lost.
      - Otherwise the server has died twice while running it, which smells like the
        prompt itself kills the process (OOM, a segfault in a kernel): it is marked
        ``failed`` with the error message :data:`CRASH_LOOP_MESSAGE` instead of being
        retried forever.
      Partial outputs and messages of the cut-off run are not kept (the executor only
      writes them at ``finish``).

Schedulers
    One worker claims with :meth:`JobStore.claim_next` (always the head of the queue).  A
    pool of workers (``graph_runtime.cluster``) reads the run order with
    :meth:`JobStore.pending_order`, picks a job for a worker (model affinity) and claims that
    one with :meth:`JobStore.claim`; when the worker process dies mid-prompt,
    :meth:`JobStore.requeue` applies the crash rule above to that one job.

Concurrency
    The web server thread(s) and the executor worker use one :class:`JobStore`
    concurrently.  It holds a single connection guarded by one lock: SQLite serialises
    writers anyway, every statement here is short, and a single connection keeps
    "claim" trivially atomic.  JSON encoding and decoding happen outside the lock.
    :meth:`JobStore.claim_next` blocks on a :class:`threading.Condition` that
    :meth:`JobStore.enqueue` notifies.  The claim is also atomic at the SQL level
    (``UPDATE ... RETURNING`` in a ``BEGIN IMMEDIATE`` transaction), but one process
    should own a database file: wake-ups, the number counter, the completion sequence,
    the history size and the queue size are kept in memory per store (a second writer could only
    produce equal numbers, which fall back to insertion order).
    WAL checkpoints (which fsync) run on a small background thread with its own
    connection, so they do not stall enqueue/claim/finish; the connection's automatic
    checkpoint stays on as a safety net with a larger threshold.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from graph_runtime.jobs.checkpointer import WalCheckpointer
from graph_runtime.jobs.records import (
    CRASH_LOOP_MESSAGE,
    CancelResult,
    DuplicateJobError,
    Job,
    JobPage,
    JobSort,
    JobStateError,
    JobStatus,
    JobStoreError,
    NewJob,
    QueueSnapshot,
    RecoveryReport,
)
from graph_runtime.jobs.sqlite_schema import (
    COLUMNS,
    FINISHED_SQL,
    RUN_ORDER,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    chunks,
    dumps,
    placeholders,
    row_to_job,
    status_values,
)

logger = logging.getLogger(__name__)

DEFAULT_DB_FILENAME = "jobs.sqlite3"
"""File name the server uses for the store inside the user data directory."""

DEFAULT_MAX_HISTORY = 10000
"""ComfyUI's history cap; the oldest finished jobs beyond it are evicted."""

SECRET_EXTRA_DATA_KEYS = frozenset({"auth_token_comfy_org", "api_key_comfy_org"})
"""``extra_data`` keys that are credentials: never written to disk."""

_CHECKPOINT_EVERY_COMMITS = 128  # wake the checkpointer this often (a few MB of WAL)
_SAFETY_AUTOCHECKPOINT_PAGES = 16384  # in-line checkpoint only if the thread falls behind
_PENDING = JobStatus.PENDING.value
_RUNNING = JobStatus.RUNNING.value


class JobStore:
    """Thread-safe durable queue + history.  See the module docstring for semantics."""

    def __init__(
        self,
        db_path: Path,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        max_attempts: int = 2,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if max_history < 0:
            raise ValueError("max_history must be >= 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.db_path = Path(db_path)
        self.max_history = max_history
        self.max_attempts = max_attempts
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._closed = False
        # In-memory state, valid because one store owns the file (module docstring).
        self._next_number = 0
        self._next_finish_seq = 1
        self._history_len = 0
        self._active = 0  # pending + running, kept in step with every state change
        self._pending = 0
        """Pending jobs, kept in step with every state change of this store.  A hint only:
        claim_next skips its first (write) transaction when it is 0, so a worker that just
        finished the last job waits without touching SQLite; after any wait it asks SQLite,
        so a job another connection added is still found (at the next wake-up or timeout)."""
        self._commits = 0
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is
        # exactly what _tx() says and nothing is left open by implicit BEGINs.
        self._conn = sqlite3.connect(
            str(self.db_path), timeout=busy_timeout_s, isolation_level=None,
            check_same_thread=False,
        )
        try:
            self._setup(busy_timeout_s)
        except BaseException:
            self._conn.close()
            raise
        self._checkpointer = WalCheckpointer(self.db_path, busy_timeout_s)

    # ----------------------------------------------------------------- setup
    def _setup(self, busy_timeout_s: float) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("job store %s: journal_mode is %s, not WAL", self.db_path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")  # payload rows go with their job
        conn.execute(f"PRAGMA wal_autocheckpoint = {_SAFETY_AUTOCHECKPOINT_PAGES}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JobStoreError(
                f"{self.db_path} has job store schema {version}; this code knows {SCHEMA_VERSION}"
            )
        with self._tx():
            for statement in SCHEMA.split(";"):  # no ";" inside SCHEMA's statements
                if statement.strip():
                    conn.execute(statement)
            if version:  # an older file: bring it up to date (a new one was just created whole)
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS.get(step, ()):
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            saved = conn.execute(
                "SELECT value FROM counters WHERE name = 'next_number'"
            ).fetchone()
            top = conn.execute("SELECT MAX(number) FROM jobs").fetchone()[0]
            last_seq = conn.execute(
                "SELECT MAX(finish_seq) FROM jobs WHERE finish_seq IS NOT NULL"
            ).fetchone()[0]
            self._history_len = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE {FINISHED_SQL}"
            ).fetchone()[0]
            self._active = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('pending','running')"
            ).fetchone()[0]
            self._pending = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'pending'"
            ).fetchone()[0]
        self._next_number = max(
            0 if saved is None else int(saved[0]),
            0 if top is None or top < 0 else math.floor(top) + 1,
        )
        self._next_finish_seq = (last_seq or 0) + 1

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; the caller holds ``self._lock``.

        BEGIN IMMEDIATE takes the write lock up front, so a second process fails fast
        (after the busy timeout) instead of deadlocking on a read→write upgrade.
        """
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _committed(self) -> None:
        """Count a write commit; every so often let the checkpointer drain the WAL."""
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY_COMMITS == 0:
            self._checkpointer.poke()

    def _check_open(self) -> None:
        if self._closed:
            raise JobStoreError("job store is closed")

    def _take_finish_seq(self) -> int:
        seq = self._next_finish_seq
        self._next_finish_seq += 1
        return seq

    # ----------------------------------------------------------------- queue
    def enqueue(
        self,
        prompt_id: str,
        prompt: dict[str, Any],
        *,
        extra_data: dict[str, Any],
        outputs_to_execute: list[str],
        client_id: str | None,
        front: bool = False,
        number: float | None = None,
        priority: int = 0,
        owner: str | None = None,
    ) -> Job:
        """Add a pending job and wake one waiting :meth:`claim_next`.

        ``number`` given: used as is (ComfyUI's explicit ``"number"``).  Otherwise the
        counter supplies it and is incremented; with ``front=True`` the number is the
        negated counter (as ComfyUI does) or, when some pending job is already lower,
        one below the lowest.  Raises :class:`DuplicateJobError` when ``prompt_id`` is
        already known (queued, running or in history).  ``owner`` is the user the job
        belongs to (multi-user mode); listings and removals can be narrowed to one owner.
        """
        result = self.enqueue_many([NewJob(prompt_id, prompt, extra_data, list(outputs_to_execute), client_id,
                                           front, number, priority, owner)])[0]
        if isinstance(result, DuplicateJobError):
            raise result
        return result

    def enqueue_many(self, jobs: Sequence[NewJob], *,
                     announce: Callable[[int], None] | None = None) -> list[Job | DuplicateJobError]:
        """Add several pending jobs in one transaction, in order (as many :meth:`enqueue` calls
        would, each with its own number); a duplicate prompt id gives its
        :class:`DuplicateJobError` in its place and does not stop the others.

        ``announce(queue_remaining)`` is called once the jobs are committed and before any
        claimer can take one (under the store's lock, so it must not call the store): the
        server's queue status always reaches clients before the job's ``execution_start``.

        Why one transaction: a server receiving many prompts at once (an app posting a batch)
        pays one commit for all of them instead of one each.
        """
        for job in jobs:
            if job.number is not None and not math.isfinite(float(job.number)):
                raise ValueError(f"queue number must be finite, got {job.number!r}")
        texts = [(dumps(job.prompt),
                  dumps({k: v for k, v in job.extra_data.items() if k not in SECRET_EXTRA_DATA_KEYS}),
                  dumps(list(job.outputs_to_execute))) for job in jobs]
        now = time.time()
        results: list[Job | DuplicateJobError] = []
        added = 0
        with self._work:
            self._check_open()
            next_number = self._next_number
            with self._tx() as conn:
                for job, (prompt_text, extra_text, outputs_text) in zip(jobs, texts):
                    if job.number is not None:
                        value = float(job.number)
                    elif job.front:
                        value = 0.0 - next_number  # 0.0 - x: no "-0.0"
                        lowest = conn.execute(
                            "SELECT MIN(number) FROM jobs WHERE status = 'pending'"
                        ).fetchone()[0]
                        if lowest is not None and lowest <= value:
                            value = math.floor(lowest) - 1.0
                    else:
                        value = float(next_number)
                    try:
                        # a failed INSERT undoes that statement only; the transaction goes on
                        seq = conn.execute(
                            "INSERT INTO jobs (prompt_id, number, priority, status, client_id,"
                            " created_at, owner) VALUES (?,?,?,?,?,?,?)",
                            (job.prompt_id, value, int(job.priority), _PENDING, job.client_id, now, job.owner),
                        ).lastrowid
                    except sqlite3.IntegrityError as exc:
                        error = DuplicateJobError(f"prompt_id {job.prompt_id!r} already exists")
                        error.__cause__ = exc
                        results.append(error)
                        continue
                    conn.execute(
                        "INSERT INTO job_payloads (seq, outputs_to_execute, prompt, extra_data)"
                        " VALUES (?,?,?,?)",
                        (seq, outputs_text, prompt_text, extra_text),
                    )
                    if job.number is None:
                        next_number += 1
                    added += 1
                    results.append(Job(
                        prompt_id=job.prompt_id, number=value, priority=int(job.priority),
                        status=JobStatus.PENDING, client_id=job.client_id, created_at=now, started_at=None,
                        finished_at=None, attempts=0, prompt_json=prompt_text, extra_data_json=extra_text,
                        outputs_to_execute_json=outputs_text, owner=job.owner,
                    ))
            self._next_number = next_number
            if added:
                self._active += added
                self._pending += added
                self._committed()
                if announce is not None:
                    announce(self._active)
                self._work.notify(added)
        return results

    def claim_next(self, timeout: float | None = None) -> Job | None:
        """Atomically move the next pending job to ``running`` and return it.

        Blocks up to ``timeout`` seconds for work (``None``: until work arrives or the
        store is closed; ``0``: do not block).  Returns ``None`` on timeout or close.  A
        single ``UPDATE ... RETURNING`` does the pick and the state change, so two
        claimers can never get the same job.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._work:
            # nothing pending by our count: wait before asking SQLite (a poll always asks)
            ask = self._pending > 0 or timeout == 0
            while True:
                if self._closed:
                    return None
                row = self._claim_locked() if ask else None
                ask = True
                if row is not None:
                    break
                if deadline is None:
                    self._work.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._work.wait(remaining)
        return row_to_job(row)

    def _claim_locked(self) -> Sequence[Any] | None:
        with self._tx() as conn:
            claimed = conn.execute(
                "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1"
                " WHERE seq = (SELECT seq FROM jobs WHERE status = 'pending'"
                f" ORDER BY {RUN_ORDER} LIMIT 1) RETURNING seq",
                (time.time(),),
            ).fetchone()
            if claimed is None:
                self._pending = 0
                return None
            row = conn.execute(f"SELECT {COLUMNS} FROM job_rows WHERE seq = ?", claimed).fetchone()
        self._pending = max(0, self._pending - 1)
        self._committed()
        return row

    def pending_order(self, limit: int | None = None) -> list[tuple[str, int]]:
        """``(prompt_id, priority)`` of pending jobs in run order, without their JSON.

        For a scheduler that picks among the first pending jobs (:meth:`claim`): cheap enough
        to call on every change of the queue.
        """
        rows = self._select(
            f"SELECT prompt_id, priority FROM jobs WHERE status = 'pending' ORDER BY {RUN_ORDER}"
            " LIMIT ?", (-1 if limit is None else int(limit),),
        )
        return [(r[0], int(r[1])) for r in rows]

    def claim(self, prompt_id: str) -> Job | None:
        """Atomically move this pending job to ``running`` (a scheduler's pick, counted in
        ``attempts`` like :meth:`claim_next`); ``None`` when it is not pending any more
        (deleted, cancelled or claimed meanwhile)."""
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                claimed = conn.execute(
                    "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1"
                    " WHERE prompt_id = ? AND status = 'pending' RETURNING seq",
                    (time.time(), prompt_id),
                ).fetchone()
                row = None if claimed is None else conn.execute(
                    f"SELECT {COLUMNS} FROM job_rows WHERE seq = ?", claimed).fetchone()
            if row is not None:
                self._pending = max(0, self._pending - 1)
            self._committed()
        return None if row is None else row_to_job(row)

    def requeue(self, prompt_id: str, *, reason: str) -> bool:
        """A running job whose worker process died: the same rule as :meth:`recover_after_restart`
        for one job.  Below ``max_attempts`` it goes back to ``pending`` at the front of the queue
        and True is returned; otherwise it is ``failed`` with ``reason`` (False).

        Raises ``KeyError`` for an unknown id and :class:`JobStateError` when it is not running.
        """
        now = time.time()
        with self._work:
            self._check_open()
            with self._tx() as conn:
                row = conn.execute(
                    "SELECT status, attempts FROM jobs WHERE prompt_id = ?", (prompt_id,)
                ).fetchone()
                if row is None:
                    raise KeyError(prompt_id)
                if row[0] != _RUNNING:
                    raise JobStateError(f"job {prompt_id} is {row[0]}, not running")
                retry = row[1] < self.max_attempts
                if retry:
                    lowest = conn.execute(
                        "SELECT MIN(number) FROM jobs WHERE status = 'pending'"
                    ).fetchone()[0]
                    conn.execute(
                        "UPDATE jobs SET status = 'pending', started_at = NULL,"
                        " number = CASE WHEN ?1 IS NULL THEN number ELSE MIN(number, ?1) END"
                        " WHERE prompt_id = ?2",
                        (None if lowest is None else math.floor(lowest) - 1, prompt_id),
                    )
                else:
                    error = dumps({"type": "worker_lost", "message": f"{reason}; not retried",
                                   "details": "", "extra_info": {}})
                    conn.execute(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?,"
                        " finish_seq = ? WHERE prompt_id = ?",
                        (now, error, self._take_finish_seq(), prompt_id),
                    )
                    evicted = self._evict_history_locked(conn, added=1)
            if not retry:
                self._history_len += 1 - evicted
                self._active -= 1  # running -> failed leaves the queue (running -> pending stays in it)
            self._committed()
            if retry:
                self._pending += 1
                self._work.notify()
        return retry

    def finish(
        self,
        prompt_id: str,
        status: JobStatus,
        *,
        outputs: dict[str, Any],
        messages: list[Any],
        meta: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        notes: dict[str, Any] | None = None,
    ) -> None:
        """Record the end of a running job and move it into history.

        ``notes`` are merged into the job's notes (facts about the run: the worker that ran it, the
        reproducibility record …; see :meth:`annotate`).

        Raises ``KeyError`` for an unknown id and :class:`JobStateError` when the job is
        not running (finishing twice is a bug in the caller, not something to paper over).
        """
        status = JobStatus(status)
        if not status.is_finished:
            raise ValueError(f"finish() needs a finished status, got {status.value}")
        payload = (
            status.value, time.time(), dumps(outputs), dumps(messages), dumps(meta or {}),
            None if error is None else dumps(error), dumps(notes or {}),
        )
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                cur = conn.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, outputs = ?, messages = ?,"
                    " meta = ?, error = ?, notes = json_patch(notes, ?), finish_seq = ?"
                    " WHERE prompt_id = ? AND status = 'running'",
                    (*payload, self._take_finish_seq(), prompt_id),
                )
                if cur.rowcount != 1:
                    row = conn.execute(
                        "SELECT status FROM jobs WHERE prompt_id = ?", (prompt_id,)
                    ).fetchone()
                    if row is None:
                        raise KeyError(prompt_id)
                    raise JobStateError(f"job {prompt_id} is {row[0]}, not running")
                evicted = self._evict_history_locked(conn, added=1)
            self._history_len += 1 - evicted
            self._active -= 1
            self._committed()

    def annotate(self, prompt_id: str, key: str, value: Any) -> bool:
        """Set ``notes[key] = value`` on a job in any state; False when the id is unknown.

        Notes are what is learnt about a job after it ran (webhook deliveries); they appear
        in its history entry under ``genesis``.
        """
        text = dumps(value)
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                changed = conn.execute(
                    "UPDATE jobs SET notes = json_set(notes, '$.' || json_quote(?), json(?))"
                    " WHERE prompt_id = ?", (key, text, prompt_id),
                ).rowcount
            self._committed()
        return changed == 1

    def _evict_history_locked(self, conn: sqlite3.Connection, *, added: int) -> int:
        """Delete the oldest finished jobs beyond ``max_history``; returns how many."""
        excess = self._history_len + added - self.max_history
        if excess <= 0:
            return 0
        return conn.execute(
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finish_seq IS NOT NULL"
            " ORDER BY finish_seq LIMIT ?)",
            (excess,),
        ).rowcount

    # ----------------------------------------------------------------- reads
    def _select(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        with self._lock:
            self._check_open()
            return self._conn.execute(sql, params).fetchall()

    def get(self, prompt_id: str) -> Job | None:
        """The job with this id in any state, or ``None``."""
        rows = self._select(f"SELECT {COLUMNS} FROM job_rows WHERE prompt_id = ?", (prompt_id,))
        return row_to_job(rows[0]) if rows else None

    def pending(self) -> list[Job]:
        """Pending jobs in run order."""
        rows = self._select(
            f"SELECT {COLUMNS} FROM job_rows WHERE status = 'pending' ORDER BY {RUN_ORDER}"
        )
        return [row_to_job(r) for r in rows]

    def running(self) -> list[Job]:
        """Running jobs (normally zero or one), oldest start first."""
        rows = self._select(
            f"SELECT {COLUMNS} FROM job_rows WHERE status = 'running' ORDER BY started_at, seq"
        )
        return [row_to_job(r) for r in rows]

    def queue_snapshot(self, *, owner: str | None = None) -> QueueSnapshot:
        """Running and pending jobs from one consistent read, for ``GET /queue``
        (only ``owner``'s when given)."""
        mine, params = _owner_sql(owner)
        with self._lock:
            self._check_open()
            conn = self._conn
            conn.execute("BEGIN")
            try:
                running = conn.execute(
                    f"SELECT {COLUMNS} FROM job_rows WHERE status = 'running'{mine}"
                    " ORDER BY started_at, seq", params,
                ).fetchall()
                pending = conn.execute(
                    f"SELECT {COLUMNS} FROM job_rows WHERE status = 'pending'{mine}"
                    f" ORDER BY {RUN_ORDER}", params,
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        return QueueSnapshot([row_to_job(r) for r in running], [row_to_job(r) for r in pending])

    def queue_remaining(self) -> int:
        """Pending + running count, ComfyUI's ``exec_info.queue_remaining``.

        Kept in memory in step with every state change (counted once at open), like the
        history length: asked after every queue change, it costs no query and no lock.
        """
        self._check_open()
        return self._active

    def count(self, statuses: Iterable[JobStatus | str] | None = None, *, owner: str | None = None) -> int:
        """Number of jobs in the given states (all jobs when ``None``), of ``owner`` when given."""
        values = status_values(statuses)
        mine, params = _owner_sql(owner)
        if values is None:
            return self._select(f"SELECT COUNT(*) FROM jobs WHERE 1{mine}", params)[0][0]
        if not values:
            return 0
        return self._select(
            f"SELECT COUNT(*) FROM jobs WHERE status IN ({placeholders(len(values))}){mine}",
            [*values, *params],
        )[0][0]

    def history(
        self,
        *,
        max_items: int | None = None,
        offset: int = 0,
        statuses: Iterable[JobStatus | str] | None = None,
        newest_first: bool = True,
        owner: str | None = None,
    ) -> JobPage:
        """Finished jobs in completion order (newest first by default), one page.

        ``statuses`` narrows the finished states (default: all of them).  ComfyUI's
        ``GET /history`` lists oldest first: pass ``newest_first=False``.
        """
        values = status_values(statuses)
        if values is None:
            values = [s.value for s in JobStatus if s.is_finished]
        bad = [v for v in values if not JobStatus(v).is_finished]
        if bad:
            raise ValueError(f"history holds finished jobs only, not {bad}")
        return self.list_jobs(
            values, limit=max_items, offset=offset, sort=JobSort.FINISHED, descending=newest_first,
            owner=owner,
        )

    def list_jobs(
        self,
        statuses: Iterable[JobStatus | str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        sort: JobSort = JobSort.CREATED,
        descending: bool = True,
        owner: str | None = None,
    ) -> JobPage:
        """A page of jobs in the given states, sorted, with the total count (``/api/jobs``).

        Jobs a sort key does not apply to (``FINISHED``/``DURATION`` for unfinished jobs)
        come last.  ``owner`` narrows the page to one user's jobs.
        """
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        values = status_values(statuses)
        where, params = "", []
        if values is not None:
            if not values:
                return JobPage([], 0, offset, limit)
            where = f"WHERE status IN ({placeholders(len(values))})"
            params = list(values)
        mine, mine_params = _owner_sql(owner)
        sort = JobSort(sort)
        direction = "DESC" if descending else "ASC"
        if sort is JobSort.QUEUE:
            order = RUN_ORDER if not descending else "priority ASC, number DESC, seq DESC"
        elif sort is JobSort.CREATED:
            order = f"created_at {direction}, seq {direction}"
        elif sort is JobSort.FINISHED:
            order = f"finish_seq {direction}"
            if values is not None and all(JobStatus(v).is_finished for v in values):
                # Walk the jobs_finished index in order instead of sorting: the unary "+"
                # stops SQLite from picking the status index, the NOT NULL term admits
                # the partial index.
                where = (f"WHERE +status IN ({placeholders(len(values))})"
                         " AND finish_seq IS NOT NULL")
            else:
                order = f"finish_seq IS NULL, {order}"
        else:
            order = (f"finished_at IS NULL, (finished_at - started_at) {direction},"
                     f" seq {direction}")
        if mine:
            where = (where or "WHERE 1") + mine
            params = [*params, *mine_params]
        with self._lock:
            self._check_open()
            conn = self._conn
            conn.execute("BEGIN")
            try:
                total = conn.execute(f"SELECT COUNT(*) FROM jobs {where}", params).fetchone()[0]
                # Sort and page on ``jobs`` alone, then fetch the big JSON of that page
                # only: joining first would drag every matching payload through the sort.
                seqs = [r[0] for r in conn.execute(
                    f"SELECT seq FROM jobs {where} ORDER BY {order} LIMIT ? OFFSET ?",
                    (*params, -1 if limit is None else limit, offset),
                ).fetchall()]
                rows: dict[int, Sequence[Any]] = {}
                for chunk in chunks(seqs):
                    for row in conn.execute(
                        f"SELECT seq, {COLUMNS} FROM job_rows"
                        f" WHERE seq IN ({placeholders(len(chunk))})", chunk,
                    ):
                        rows[row[0]] = row[1:]
            finally:
                conn.execute("COMMIT")
        return JobPage([row_to_job(rows[q]) for q in seqs if q in rows], total, offset, limit)

    # ----------------------------------------------------------------- removal
    def _delete_where(self, condition: str, prompt_ids: Iterable[str], owner: str | None) -> list[str]:
        """Delete the given jobs that match ``condition`` (caller holds the lock); returns their ids."""
        self._check_open()
        mine, params = _owner_sql(owner)
        removed: list[str] = []
        with self._tx() as conn:
            for chunk in chunks(list(dict.fromkeys(prompt_ids))):
                removed += [r[0] for r in conn.execute(
                    f"DELETE FROM jobs WHERE {condition}{mine} AND prompt_id IN"
                    f" ({placeholders(len(chunk))}) RETURNING prompt_id", [*params, *chunk],
                ).fetchall()]
        return removed

    def delete_pending(self, prompt_ids: Iterable[str], *, owner: str | None = None) -> list[str]:
        """Remove the given jobs if they are still pending (and ``owner``'s); returns the ids removed."""
        with self._lock:
            removed = self._delete_where("status = 'pending'", prompt_ids, owner)
            self._active -= len(removed)
            self._pending = max(0, self._pending - len(removed))
            self._committed()
        return removed

    def clear_pending(self, *, owner: str | None = None) -> list[str]:
        """Remove every pending job (of ``owner`` when given); returns their ids."""
        mine, params = _owner_sql(owner)
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                removed = [r[0] for r in conn.execute(
                    f"DELETE FROM jobs WHERE status = 'pending'{mine} RETURNING prompt_id", params,
                ).fetchall()]
            self._active -= len(removed)
            self._pending = max(0, self._pending - len(removed))
            self._committed()
        return removed

    def cancel(self, prompt_ids: Iterable[str], *, owner: str | None = None) -> CancelResult:
        """Pending → ``cancelled`` (kept in history); running ones are reported back.

        Unknown and already finished ids are ignored, and so are other owners' jobs when
        ``owner`` is given.
        """
        mine, mine_params = _owner_sql(owner)
        ids = list(dict.fromkeys(prompt_ids))
        cancelled: list[str] = []
        running: list[str] = []
        now = time.time()
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                for chunk in chunks(ids):
                    state = dict(conn.execute(
                        f"SELECT prompt_id, status FROM jobs WHERE prompt_id IN"
                        f" ({placeholders(len(chunk))}) AND status IN ('pending','running'){mine}",
                        [*chunk, *mine_params],
                    ).fetchall())
                    for pid in chunk:
                        if state.get(pid) == _RUNNING:
                            running.append(pid)
                        elif state.get(pid) == _PENDING:
                            conn.execute(
                                "UPDATE jobs SET status = 'cancelled', finished_at = ?,"
                                " finish_seq = ? WHERE prompt_id = ?",
                                (now, self._take_finish_seq(), pid),
                            )
                            cancelled.append(pid)
                evicted = self._evict_history_locked(conn, added=len(cancelled))
            self._history_len += len(cancelled) - evicted
            self._active -= len(cancelled)
            self._pending = max(0, self._pending - len(cancelled))
            self._committed()
        return CancelResult(cancelled=cancelled, running=running)

    def delete_history(self, prompt_ids: Iterable[str], *, owner: str | None = None) -> list[str]:
        """Remove finished jobs; pending/running ids are left alone.  Returns ids removed."""
        with self._lock:
            removed = self._delete_where(FINISHED_SQL, prompt_ids, owner)
            self._history_len -= len(removed)
            self._committed()
        return removed

    def clear_history(self, *, owner: str | None = None) -> int:
        """Remove every finished job (of ``owner`` when given); returns how many."""
        mine, params = _owner_sql(owner)
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                n = conn.execute(f"DELETE FROM jobs WHERE {FINISHED_SQL}{mine}", params).rowcount
            self._history_len -= n
            self._committed()
        return n

    def check_writable(self) -> None:
        """Raise unless the database takes a committed write right now (``/ready``)."""
        with self._lock:
            self._check_open()
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES ('ready_probes', 1)"
                    " ON CONFLICT (name) DO UPDATE SET value = value + 1"
                )
            self._committed()

    # ----------------------------------------------------------------- lifecycle
    def recover_after_restart(self) -> RecoveryReport:
        """Deal with jobs left ``running`` by a crash (see the module docstring).

        Call once at startup before the worker claims anything; calling it while this
        process is running a job would requeue that job.
        """
        now = time.time()
        error = dumps({"type": "server_crash", "message": CRASH_LOOP_MESSAGE,
                        "details": "", "extra_info": {}})
        with self._work:
            self._check_open()
            with self._tx() as conn:
                running = conn.execute(
                    "SELECT prompt_id, attempts FROM jobs WHERE status = 'running'"
                    f" ORDER BY {RUN_ORDER}"
                ).fetchall()
                retry = [pid for pid, attempts in running if attempts < self.max_attempts]
                failed = [pid for pid, attempts in running if attempts >= self.max_attempts]
                lowest = conn.execute(
                    "SELECT MIN(number) FROM jobs WHERE status = 'pending'"
                ).fetchone()[0]
                for i, pid in enumerate(retry):
                    # below every pending job, keeping the order among the requeued ones
                    front = None if lowest is None else math.floor(lowest) - len(retry) + i
                    conn.execute(
                        "UPDATE jobs SET status = 'pending', started_at = NULL,"
                        " number = CASE WHEN ?1 IS NULL THEN number ELSE MIN(number, ?1) END"
                        " WHERE prompt_id = ?2",
                        (front, pid),
                    )
                for pid in failed:
                    conn.execute(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, error = ?,"
                        " finish_seq = ? WHERE prompt_id = ?",
                        (now, error, self._take_finish_seq(), pid),
                    )
                evicted = self._evict_history_locked(conn, added=len(failed))
                pending = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'pending'"
                ).fetchone()[0]
            self._history_len += len(failed) - evicted
            self._active -= len(failed)
            self._pending = pending
            self._committed()
            if retry:
                self._work.notify_all()
        for pid in retry:
            logger.warning("job %s was running when the server stopped; requeued at the front", pid)
        for pid in failed:
            logger.error("job %s: %s", pid, CRASH_LOOP_MESSAGE)
        return RecoveryReport(requeued=retry, failed=failed, pending=pending)

    def close(self) -> None:
        """Save the number counter, close the database and wake every blocked claimer.

        Blocked :meth:`claim_next` calls return ``None``; later calls raise or return
        ``None`` as documented on each method.
        """
        with self._work:
            if self._closed:
                return
            self._closed = True
            self._work.notify_all()
            try:
                with self._tx() as conn:
                    conn.execute(
                        "INSERT INTO counters (name, value) VALUES ('next_number', ?)"
                        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        (self._next_number,),
                    )
            except sqlite3.Error:
                logger.warning("job store %s: could not save the counter", self.db_path,
                               exc_info=True)
            self._checkpointer.stop()
            self._conn.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _owner_sql(owner: str | None) -> tuple[str, list[Any]]:
    """`` AND owner = ?`` and its parameter, or nothing when every owner's jobs are meant."""
    return ("", []) if owner is None else (" AND owner = ?", [owner])
