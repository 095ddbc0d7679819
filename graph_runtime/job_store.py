"""Public entry point of the durable job queue/history store.

The implementation lives in the :mod:`graph_runtime.jobs` package (records, SQLite
schema, checkpointer, store); this module re-exports its public API so callers have one
stable import path: ``from graph_runtime.job_store import JobStore, JobStatus``.  The
crash and ordering semantics are documented in :mod:`graph_runtime.jobs.store`.
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
    "QueueSnapshot",
    "RecoveryReport",
]
