"""SQLite schema of the job store and the row ↔ :class:`Job` mapping.

Why two tables: the prompt and extra_data (the full UI workflow, often tens of KB) are
written once and never change, while the state columns change at claim and finish.
SQLite rewrites a whole record on UPDATE, so keeping the big immutable JSON out of the
``jobs`` row keeps claim/finish cheap and index-only scans of ``jobs`` small.  Only two
secondary indices (run order; completion order) because every index is written on every
state change.  The ``job_rows`` view joins the two for reads.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Sequence

from graph_runtime.jobs.records import Job, JobStatus

SCHEMA_VERSION = 3
"""Stored in ``PRAGMA user_version``; a newer file is refused rather than misread.

Version 2 added ``jobs.notes`` (JSON facts about the run, written with the result and after it:
where the job ran, what it loaded, the reproducibility record, webhook deliveries); version 3
added ``jobs.owner`` (the user a job belongs to in multi-user mode).
"""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE jobs ADD COLUMN notes TEXT NOT NULL DEFAULT '{}'",),
    3: ("ALTER TABLE jobs ADD COLUMN owner TEXT",),
}
"""Statements that bring a file of version ``v - 1`` to version ``v``."""

SQL_CHUNK = 500
"""Ids per ``IN (...)`` list, well below SQLite's variable limit."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY,          -- insertion order, the final tie-break
    prompt_id   TEXT    NOT NULL UNIQUE,
    number      REAL    NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    status      TEXT    NOT NULL CHECK (status IN
                    ('pending','running','succeeded','failed','cancelled','interrupted')),
    client_id   TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    finish_seq  INTEGER,                      -- completion order (history)
    error       TEXT,                         -- JSON or NULL
    meta        TEXT    NOT NULL DEFAULT '{}',
    messages    TEXT    NOT NULL DEFAULT '[]',
    outputs     TEXT    NOT NULL DEFAULT '{}',
    notes       TEXT    NOT NULL DEFAULT '{}', -- JSON facts about the run (worker, record, webhooks)
    owner       TEXT                          -- user name (multi-user) or NULL
);
CREATE TABLE IF NOT EXISTS job_payloads (
    seq                INTEGER PRIMARY KEY REFERENCES jobs (seq) ON DELETE CASCADE,
    outputs_to_execute TEXT NOT NULL,         -- JSON list
    prompt             TEXT NOT NULL,         -- JSON
    extra_data         TEXT NOT NULL          -- JSON, holds the whole UI workflow
);
CREATE VIEW IF NOT EXISTS job_rows AS
    SELECT j.*, p.outputs_to_execute, p.prompt, p.extra_data
    FROM jobs AS j JOIN job_payloads AS p ON p.seq = j.seq;
CREATE INDEX IF NOT EXISTS jobs_run_order ON jobs (status, priority DESC, number, seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finish_seq, status)
    WHERE finish_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

COLUMNS = (
    "prompt_id, number, priority, status, client_id, prompt, extra_data, outputs_to_execute, "
    "created_at, started_at, finished_at, outputs, messages, meta, error, attempts, notes, owner"
)
RUN_ORDER = "priority DESC, number, seq"
FINISHED_SQL = "status IN ('succeeded','failed','cancelled','interrupted')"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def row_to_job(row: Sequence[Any]) -> Job:
    (prompt_id, number, priority, status, client_id, prompt, extra_data, outputs_to_execute,
     created_at, started_at, finished_at, outputs, messages, meta, error, attempts, notes, owner) = row
    return Job(
        prompt_id=prompt_id,
        number=float(number),
        priority=int(priority),
        status=JobStatus(status),
        client_id=client_id,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        attempts=int(attempts),
        prompt_json=prompt,
        extra_data_json=extra_data,
        outputs_to_execute_json=outputs_to_execute,
        outputs_json=outputs,
        messages_json=messages,
        meta_json=meta,
        error_json=error,
        owner=owner,
        notes_json=notes,
    )


def status_values(statuses: Iterable[JobStatus | str] | None) -> list[str] | None:
    if statuses is None:
        return None
    return [JobStatus(s).value for s in statuses]


def chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(ids), SQL_CHUNK):
        yield ids[i:i + SQL_CHUNK]


def placeholders(n: int) -> str:
    return ",".join("?" * n)
