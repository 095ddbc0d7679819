"""Typed records of the job store: statuses, the Job snapshot, pages and reports.

Kept apart from the SQLite code so that the executor, the web routes and tests can
import the shapes without pulling in the storage engine.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any

CRASH_LOOP_MESSAGE = "the server stopped twice while running this prompt; not retried"
"""Error message of a job failed by recovery because the server died twice running it."""


class JobStatus(str, Enum):
    """Lifecycle state of a job; the value is what is stored in the database."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_finished(self) -> bool:
        """True for the states that belong to history."""
        return self in FINISHED_STATUSES


FINISHED_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED}
)


class JobSort(str, Enum):
    """Sort keys for :meth:`JobStore.list_jobs` (the ``/api/jobs`` listing)."""

    QUEUE = "queue"  # run order: priority desc, number, insertion (descending flips it)
    CREATED = "create_time"
    FINISHED = "finish"  # completion order; unfinished jobs last
    DURATION = "execution_duration"  # finished_at - started_at; unfinished jobs last


class JobStoreError(Exception):
    """Base class for errors raised by the store."""


class DuplicateJobError(JobStoreError, ValueError):
    """A job with this prompt_id already exists (queued, running or in history)."""


class JobStateError(JobStoreError):
    """The job exists but is not in a state that allows the operation."""


@dataclass(frozen=True)
class Job:
    """A snapshot of one job row.

    The JSON columns are kept as the stored text (``*_json``) and decoded on first access
    of the matching property (``prompt``, ``extra_data``, ...).  Why: listings such as
    ``/api/jobs`` return hundreds of jobs whose ``extra_data`` carries the whole UI
    workflow (tens of KB each) and mostly need only status, times and outputs; eager
    decoding made a 200-item page cost ~100 ms of GIL time.  Each decoded value is a
    private copy for this snapshot: mutating it changes neither the store nor other
    snapshots.  Times are Unix epoch seconds.
    """

    prompt_id: str
    number: float
    priority: int
    status: JobStatus
    client_id: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    prompt_json: str = field(repr=False)
    extra_data_json: str = field(repr=False)
    outputs_to_execute_json: str = field(repr=False)
    outputs_json: str = field(default="{}", repr=False)
    messages_json: str = field(default="[]", repr=False)
    meta_json: str = field(default="{}", repr=False)
    error_json: str | None = field(default=None, repr=False)
    owner: str | None = None
    notes_json: str = field(default="{}", repr=False)

    # cached_property works on a frozen dataclass: it writes the instance __dict__
    # directly, not through __setattr__.
    @cached_property
    def prompt(self) -> dict[str, Any]:
        """The validated API prompt ``{node_id: {class_type, inputs, ...}}``."""
        return json.loads(self.prompt_json)

    @cached_property
    def extra_data(self) -> dict[str, Any]:
        """``client_id``, ``extra_pnginfo`` and the rest of the request's extra data."""
        return json.loads(self.extra_data_json)

    @cached_property
    def outputs_to_execute(self) -> list[str]:
        """Output node ids that passed validation and will run."""
        return json.loads(self.outputs_to_execute_json)

    @cached_property
    def outputs(self) -> dict[str, Any]:
        """Per-node UI dicts, e.g. ``{"9": {"images": [{filename, subfolder, type}]}}``."""
        return json.loads(self.outputs_json)

    @cached_property
    def messages(self) -> list[Any]:
        """Status messages ``[[type, data], ...]`` (execution_start, ..._success/error)."""
        return json.loads(self.messages_json)

    @cached_property
    def meta(self) -> dict[str, Any]:
        """Per-node meta ``{node_id: {node_id, display_node, parent_node, real_node_id}}``."""
        return json.loads(self.meta_json)

    @cached_property
    def error(self) -> dict[str, Any] | None:
        """Error detail of a failed job, else ``None``."""
        return None if self.error_json is None else json.loads(self.error_json)

    @cached_property
    def notes(self) -> dict[str, Any]:
        """Facts about the job beyond ComfyUI's fields: ``worker`` (name, host, pid), ``record``
        (reproducibility), ``webhook`` (deliveries), models the worker loaded."""
        return json.loads(self.notes_json)

    def queue_item(self) -> list[Any]:
        """ComfyUI's 5-array ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``.

        Used by ``GET /queue`` and as the ``prompt`` field of a history entry.  The number
        is an int when it is integral, as ComfyUI's counter numbers are.
        """
        number: float | int = self.number
        if math.isfinite(self.number) and self.number.is_integer():
            number = int(self.number)
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]

    def history_entry(self) -> dict[str, Any]:
        """ComfyUI's HistoryEntry: ``{prompt, outputs, status{status_str, completed, messages}, meta}``.

        Genesis adds ``worker`` (``{name, host, pid}``: where the job ran) and ``genesis`` (the
        other notes, e.g. the models the worker had to load) when the job has them.
        """
        succeeded = self.status is JobStatus.SUCCEEDED
        entry: dict[str, Any] = {
            "prompt": self.queue_item(),
            "outputs": self.outputs,
            "status": {
                "status_str": "success" if succeeded else "error",
                "completed": succeeded,
                "messages": self.messages,
            },
            "meta": self.meta,
        }
        notes = dict(self.notes)
        worker = notes.pop("worker", None)
        if worker:
            entry["worker"] = worker
        if notes:
            entry["genesis"] = notes
        return entry


@dataclass(frozen=True)
class NewJob:
    """One job to enqueue (see :meth:`graph_runtime.jobs.JobStore.enqueue` for the fields' meaning)."""

    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    client_id: str | None
    front: bool = False
    number: float | None = None
    priority: int = 0
    owner: str | None = None


@dataclass(frozen=True)
class JobPage:
    """One page of a listing plus the total number of matching jobs, for pagination."""

    jobs: list[Job]
    total: int
    offset: int
    limit: int | None

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.jobs) < self.total


@dataclass(frozen=True)
class QueueSnapshot:
    """Running and pending jobs read in one transaction (``GET /queue``), in run order."""

    running: list[Job]
    pending: list[Job]


@dataclass(frozen=True)
class CancelResult:
    """Outcome of :meth:`JobStore.cancel`.

    ``running`` lists the requested jobs that are executing right now: the store cannot
    stop them; the caller interrupts the executor, which then finishes them.
    """

    cancelled: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`JobStore.recover_after_restart` did with jobs cut off by a crash."""

    requeued: list[str]
    failed: list[str]
    pending: int  # pending jobs after recovery, requeued ones included
