"""The jobs API (``/jobs``): what frontend 1.58 reads its queue and history panels from.

One job shape for every state: ``{id, status, create_time, execution_start_time,
execution_end_time, outputs_count, previewable_outputs_count, preview_output,
execution_error, priority}`` with statuses ``pending | in_progress | completed | failed |
cancelled``; times are epoch milliseconds.  ``GET /jobs/{id}`` adds ``workflow`` (the API
prompt and the UI workflow the job came from), ``outputs``, ``execution_status`` and
``execution_meta``.  An unknown id is a 404, a pending one is ``status: pending``.
Reads go through the runtime façade (off the event loop); in multi-user mode a user lists,
reads and cancels only their own jobs.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from graph_runtime.jobs import Job, JobSort, JobStatus
from web.auth import owner_of
from web.bodies import BadRequest, CancelJobsBody, json_error, parse_body
from web.results import execution_error
from web.state import state_of

routes = web.RouteTableDef()

API_STATUS: dict[JobStatus, str] = {
    JobStatus.PENDING: "pending",
    JobStatus.RUNNING: "in_progress",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.INTERRUPTED: "cancelled",
}
STORE_STATUSES: dict[str, list[JobStatus]] = {}
for _store, _api in API_STATUS.items():
    STORE_STATUSES.setdefault(_api, []).append(_store)

PREVIEWABLE_KEYS = ("images", "video", "audio", "gifs", "animated")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 200
MAX_OFFSET = 2 ** 62


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _output_items(outputs: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(node id, media key, item) for every output item, in node order."""
    items = []
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for key, values in ui.items():
            if isinstance(values, list):
                items += [(node_id, key, v) for v in values]
    return items


def _preview(items: list[tuple[str, str, Any]]) -> dict[str, Any] | None:
    for node_id, key, item in items:
        if key in PREVIEWABLE_KEYS and isinstance(item, dict) and item.get("filename"):
            return {**item, "nodeId": node_id, "mediaType": key}
    return None


def job_summary(job: Job) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "id": job.prompt_id,
        "status": API_STATUS[job.status],
        "create_time": _ms(job.created_at),
        "execution_start_time": _ms(job.started_at),
        "execution_end_time": _ms(job.finished_at),
        "priority": job.number,
        "outputs_count": 0,
        "previewable_outputs_count": 0,
        "preview_output": None,
        "execution_error": None,
    }
    if job.status.is_finished:
        items = _output_items(job.outputs)
        summary["outputs_count"] = len(items)
        summary["previewable_outputs_count"] = sum(1 for _, key, _ in items if key in PREVIEWABLE_KEYS)
        summary["preview_output"] = _preview(items)
        summary["execution_error"] = execution_error(job)
    return summary


def job_detail(job: Job) -> dict[str, Any]:
    detail = job_summary(job)
    workflow = (job.extra_data.get("extra_pnginfo") or {}).get("workflow")
    detail["workflow"] = {"prompt": job.prompt, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}
    if isinstance(workflow, dict) and isinstance(workflow.get("id"), str):
        detail["workflow_id"] = workflow["id"]
    detail["update_time"] = _ms(job.finished_at or job.started_at or job.created_at)
    detail["outputs"] = job.outputs
    if job.status.is_finished:
        entry = job.history_entry()
        detail["execution_status"] = entry["status"]
        detail["execution_meta"] = entry["meta"]
    return detail


def _statuses(raw: str | None) -> list[JobStatus] | None:
    if not raw:
        return None
    wanted: list[JobStatus] = []
    for name in raw.split(","):
        name = name.strip()
        if not name:
            continue
        if name not in STORE_STATUSES:
            raise BadRequest("invalid_request", f"Unknown job status {name!r}",
                             "use " + ", ".join(sorted(STORE_STATUSES)))
        wanted += STORE_STATUSES[name]
    return wanted


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("invalid_request", f"Query parameter {name!r} must be an integer", raw) from None
    if value < lo or (hi is not None and value > hi):
        raise BadRequest("invalid_request", f"Query parameter {name!r} is out of range",
                         f"{value} is not in [{lo}, {hi if hi is not None else '∞'}]")
    return value


@routes.get("/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    statuses = _statuses(request.query.get("status"))
    limit = _int(request, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
    offset = _int(request, "offset", 0, 0, MAX_OFFSET) or 0
    sort_by = request.query.get("sort_by", "created_at")
    order = request.query.get("sort_order", "desc")
    if sort_by not in ("created_at", "execution_duration") or order not in ("asc", "desc"):
        raise BadRequest("invalid_request", "Invalid sort", "sort_by: created_at | execution_duration; "
                         "sort_order: asc | desc")
    sort = JobSort.CREATED if sort_by == "created_at" else JobSort.DURATION
    page = await state_of(request).api.list_jobs(statuses, limit=limit, offset=offset, sort=sort,
                                                 descending=order == "desc", owner=owner_of(request))
    return web.json_response({
        "jobs": [job_summary(j) for j in page.jobs],
        "pagination": {"offset": offset, "limit": limit,
                       "total": page.total, "has_more": page.has_more},
    })


@routes.get("/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    job = await state_of(request).api.get(request.match_info["job_id"], owner=owner_of(request))
    if job is None:
        return json_error(404, "not_found", "Job not found", request.match_info["job_id"])
    return web.json_response(job_detail(job))


@routes.get("/jobs/{job_id}/assets")
async def get_job_assets(request: web.Request) -> web.Response:
    job = await state_of(request).api.get(request.match_info["job_id"], owner=owner_of(request))
    if job is None:
        return json_error(404, "not_found", "Job not found", request.match_info["job_id"])
    limit = _int(request, "limit", 500, 0, MAX_LIMIT) or 0
    offset = _int(request, "offset", 0, 0, MAX_OFFSET) or 0
    assets = []
    per_node: dict[tuple[str, str], int] = {}
    for node_id, key, item in _output_items(job.outputs):
        if not isinstance(item, dict) or not item.get("filename"):
            continue
        index = per_node[(node_id, key)] = per_node.get((node_id, key), -1) + 1
        assets.append({"id": f"{job.prompt_id}:{node_id}:{key}:{index}", "name": item["filename"],
                       "preview_url": None, "mime_type": None, "node_id": node_id, "output_key": key,
                       "output_index": index, "created_at": None, **item})
    page = assets[offset:offset + limit]
    return web.json_response({"job_id": job.prompt_id, "assets": page,
                              "pagination": {"offset": offset, "limit": limit, "total": len(assets),
                                             "has_more": offset + len(page) < len(assets)}})


@routes.post("/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    api = state_of(request).api
    owner = owner_of(request)
    job_id = request.match_info["job_id"]
    job = await api.get(job_id, owner=owner)
    if job is None:
        return json_error(404, "not_found", "Job not found", job_id)
    if job.status.is_finished:
        return json_error(409, "conflict", "Job already finished", f"{job_id} is {API_STATUS[job.status]}")
    result = await api.cancel([job_id], owner=owner)
    return web.json_response({"cancelled": result["cancelled"] + result["interrupted"]})


@routes.post("/jobs/cancel")
async def cancel_jobs(request: web.Request) -> web.Response:
    body = await parse_body(request, CancelJobsBody)
    result = await state_of(request).api.cancel(body.job_ids, owner=owner_of(request))
    return web.json_response({"cancelled": result["cancelled"] + result["interrupted"]})
