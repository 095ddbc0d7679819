"""What a finished job looks like to an API caller: ``POST /api/run``'s answer and the webhook body.

``{"prompt_id", "status", "outputs": {node_id: {"images": [{filename, subfolder, type, url}],
"text": [...]}}, "timings": {...}, "error"?, "record"?}``.  ``status`` is ``pending`` or
``running`` while the job is queued, then ``success``, ``error``, ``interrupted`` or
``cancelled``.  File outputs get a ``url`` relative to the server (``/view?...``) that a
client joins to the base URL it called.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from graph_runtime.jobs import Job, JobStatus

RUN_STATUS: dict[JobStatus, str] = {
    JobStatus.PENDING: "pending",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "success",
    JobStatus.FAILED: "error",
    JobStatus.INTERRUPTED: "interrupted",
    JobStatus.CANCELLED: "cancelled",
}


def view_url(item: dict[str, Any]) -> str:
    query = {"filename": str(item.get("filename", "")), "subfolder": str(item.get("subfolder") or ""),
             "type": str(item.get("type") or "output")}
    return "/view?" + urlencode(query)


def _with_urls(outputs: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        entry: dict[str, Any] = {}
        for key, values in ui.items():
            if isinstance(values, list):
                entry[key] = [{**v, "url": view_url(v)} if isinstance(v, dict) and v.get("filename") else v
                              for v in values]
            else:
                entry[key] = values
        result[node_id] = entry
    return result


def execution_error(job: Job) -> dict[str, Any] | None:
    """The ``execution_error`` of a failed job: the node that failed and why."""
    if job.status is not JobStatus.FAILED:
        return None
    for kind, data in reversed(job.messages):
        if kind == "execution_error" and isinstance(data, dict):
            return data
    error = job.error or {}
    return {"node_id": str(error.get("node_id") or ""), "node_type": str(error.get("node_type") or ""),
            "exception_message": str(error.get("exception_message") or error.get("message") or "failed"),
            "exception_type": str(error.get("exception_type") or ""),
            "traceback": [str(t) for t in error.get("traceback") or []]}


def timings(job: Job) -> dict[str, Any]:
    queued = (job.started_at - job.created_at) if job.started_at is not None else None
    run = (job.finished_at - job.started_at) if job.finished_at is not None and job.started_at is not None else None
    total = (job.finished_at - job.created_at) if job.finished_at is not None else None
    nodes = {}
    for node_id, meta in job.meta.items():
        execution = meta.get("execution") if isinstance(meta, dict) else None
        if isinstance(execution, dict) and "seconds" in execution:
            nodes[node_id] = {"class_type": execution.get("class_type"), "seconds": execution["seconds"]}
    return {"queued_seconds": _round(queued), "run_seconds": _round(run), "total_seconds": _round(total),
            "nodes": nodes}


def _round(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 6)


def run_result(job: Job) -> dict[str, Any]:
    result: dict[str, Any] = {"prompt_id": job.prompt_id, "status": RUN_STATUS[job.status],
                              "outputs": _with_urls(job.outputs) if job.status.is_finished else {},
                              "timings": timings(job)}
    error = execution_error(job)
    if error is not None:
        result["error"] = error
    record = job.notes.get("record")
    if record is not None:
        result["record"] = record
    return result
