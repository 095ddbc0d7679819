"""Workflows as functions: ``POST /api/run`` queues a prompt and answers with its result.

The body is the one ``POST /prompt`` takes (API or UI format), plus an optional ``webhook``
URL.  By default the request waits for the job to finish and answers ``200`` with
:func:`web.results.run_result` (outputs with URLs, timings, the failing node on an
execution error, the reproducibility record); ``?wait=false`` answers ``202 {"prompt_id"}``
at once; ``?timeout=S`` bounds the wait (then ``202`` with the current status).  Invalid
prompts get ``/prompt``'s ``400``.  An execution error is still a ``200``: the request was
served, the body's ``status`` says how the run ended.  A job removed from the queue while
the caller waited answers ``410``.
"""
from __future__ import annotations

import math

from aiohttp import web

from web.bodies import BadRequest, RunBody, parse_body
from web.results import RUN_STATUS, run_result
from web.routes.queue import checked_extra_data, submit
from web.state import state_of

routes = web.RouteTableDef()

DEFAULT_TIMEOUT = 3600.0


def _wait_flag(request: web.Request) -> bool:
    raw = request.query.get("wait", "true").strip().lower()
    if raw in ("true", "1", "yes", ""):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise BadRequest("invalid_request", "Query parameter 'wait' must be true or false", raw)


def _timeout(request: web.Request) -> float:
    raw = request.query.get("timeout")
    if raw in (None, ""):
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise BadRequest("invalid_request", "Query parameter 'timeout' must be a positive number of seconds", raw)
    return value


@routes.post("/run")
async def run(request: web.Request) -> web.Response:
    wait, timeout = _wait_flag(request), _timeout(request)
    body = await parse_body(request, RunBody, node_errors=True)
    result = await submit(request, body, checked_extra_data(body.extra_data, body.webhook))
    if not result.ok:
        return web.json_response(result.response(), status=400)
    if not wait:
        return web.json_response({"prompt_id": result.prompt_id}, status=202)
    job = await state_of(request).api.wait(result.prompt_id, timeout)
    if job is None:
        return web.json_response({"prompt_id": result.prompt_id, "status": "removed"}, status=410)
    if not job.status.is_finished:
        return web.json_response({"prompt_id": result.prompt_id, "status": RUN_STATUS[job.status]}, status=202)
    return web.json_response(run_result(job))
