"""Durable job queue and history (SQLite).  See :mod:`graph_runtime.jobs.store`.

Modules: ``records`` (typed shapes: JobStatus, Job, pages, reports), ``sqlite_schema``
(tables, indices, row mapping), ``checkpointer`` (background WAL checkpoints) and
``store`` (:class:`JobStore`, the only thing that talks to the database).
"""
from graph_runtime.jobs.records import (
    CRASH_LOOP_MESSAGE,
    FINISHED_STATUSES,
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
from graph_runtime.jobs.store import (
    DEFAULT_DB_FILENAME,
    DEFAULT_MAX_HISTORY,
    SECRET_EXTRA_DATA_KEYS,
    JobStore,
)

__all__ = [
    "CRASH_LOOP_MESSAGE",
    "DEFAULT_DB_FILENAME",
    "DEFAULT_MAX_HISTORY",
    "FINISHED_STATUSES",
    "SECRET_EXTRA_DATA_KEYS",
    "CancelResult",
    "DuplicateJobError",
    "Job",
    "JobPage",
    "JobSort",
    "JobStateError",
    "JobStatus",
    "JobStore",
    "JobStoreError",
    "NewJob",
    "QueueSnapshot",
    "RecoveryReport",
]
