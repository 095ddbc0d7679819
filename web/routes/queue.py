"""Queueing and results: ``/prompt``, ``/queue``, ``/history``, ``/interrupt``, ``/free``.

Shapes follow ComfyUI (see ``docs``/the API reference): queue items are the 5-array
``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` and history entries carry
``prompt``, ``outputs``, ``status`` and ``meta``.  One deliberate difference:
``GET /history/{id}`` answers ``404 {}`` for an id the server has never seen, so a client
can tell it apart from a prompt that is still pending or running (``200 {}``, as ComfyUI).
"""
from __future__ import annotations

from aiohttp import web

from graph_runtime.jobs import JobStatus
from graph_runtime.service import is_ui_workflow
from web.bodies import BadRequest, FreeBody, InterruptBody, PromptBody, QueueBody, json_error, parse_body
from web.state import state_of

routes = web.RouteTableDef()

FINISHED = [s for s in JobStatus if s.is_finished]


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest("invalid_request", f"Query parameter {name!r} must be an integer", raw) from None


@routes.get("/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    remaining = state_of(request).runtime.store.queue_remaining()
    return web.json_response({"exec_info": {"queue_remaining": remaining}})


@routes.post("/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await parse_body(request, PromptBody, node_errors=True)
    prompt = body.prompt
    if prompt is None and is_ui_workflow(body.model_extra):
        prompt = dict(body.model_extra or {})  # a bare UI workflow was posted
    if prompt is None:
        return json_error(400, "no_prompt", "No prompt provided", "No prompt provided", node_errors={})
    result = state.runtime.submit(
        prompt, client_id=body.client_id, extra_data=body.extra_data, front=body.front, number=body.number,
        partial_targets=body.partial_execution_targets, prompt_id=body.prompt_id)
    return web.json_response(result.response(), status=200 if result.ok else 400)


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    snapshot = state_of(request).runtime.store.queue_snapshot()
    return web.json_response({"queue_running": [j.queue_item() for j in snapshot.running],
                              "queue_pending": [j.queue_item() for j in snapshot.pending]})


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    runtime = state_of(request).runtime
    body = await parse_body(request, QueueBody)
    if body.clear:
        runtime.clear_pending()
    if body.delete:
        runtime.delete_pending(body.delete)
    return web.Response()


@routes.post("/interrupt")
async def post_interrupt(request: web.Request) -> web.Response:
    try:
        body = await parse_body(request, InterruptBody, empty_ok=True)
    except web.HTTPBadRequest:  # ComfyUI treats an unreadable body as "interrupt whatever runs"
        body = InterruptBody()
    state_of(request).runtime.interrupt(body.prompt_id)
    return web.Response()


@routes.post("/free")
async def post_free(request: web.Request) -> web.Response:
    body = await parse_body(request, FreeBody, empty_ok=True)
    state_of(request).runtime.free(unload_models=body.unload_models, free_memory=body.free_memory)
    return web.Response()


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    store = state_of(request).runtime.store
    max_items = _int_query(request, "max_items", None)
    offset = _int_query(request, "offset", -1)
    if max_items is not None and max_items < 0:
        raise BadRequest("invalid_request", "max_items must be >= 0", str(max_items))
    if offset is None or offset < 0:
        # ComfyUI: without an offset, max_items means "the last N entries"
        offset = max(0, store.count(FINISHED) - max_items) if max_items is not None else 0
    page = store.history(max_items=max_items, offset=offset, newest_first=False)
    return web.json_response({job.prompt_id: job.history_entry() for job in page.jobs})


@routes.get("/history/{prompt_id}")
async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    job = state_of(request).runtime.store.get(prompt_id)
    if job is None:
        return web.json_response({}, status=404)
    if not job.status.is_finished:
        return web.json_response({}, headers={"X-Job-Status": job.status.value})
    return web.json_response({prompt_id: job.history_entry()}, headers={"X-Job-Status": job.status.value})


@routes.post("/history")
async def post_history(request: web.Request) -> web.Response:
    store = state_of(request).runtime.store
    body = await parse_body(request, QueueBody)
    if body.clear:
        store.clear_history()
    if body.delete:
        store.delete_history(body.delete)
    return web.Response()

