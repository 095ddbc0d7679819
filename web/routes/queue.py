"""Queueing and results: ``/prompt``, ``/queue``, ``/history``, ``/interrupt``, ``/free``.

Shapes follow ComfyUI (see ``docs``/the API reference): queue items are the 5-array
``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` and history entries carry
``prompt``, ``outputs``, ``status`` and ``meta`` (plus ``genesis``: the reproducibility record
and webhook deliveries).  One deliberate difference: ``GET /history/{id}`` answers ``404 {}``
for an id the server has never seen, so a client can tell it apart from a prompt that is
still pending or running (``200 {}`` with ``X-Job-Status``, as ComfyUI answers ``{}``).

Every handler awaits the runtime façade: nothing here touches SQLite or the disk on the
event loop.  In multi-user mode each request sees and changes only its user's jobs.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from graph_runtime.service import is_ui_workflow
from web.auth import owner_of
from web.bodies import BadRequest, FreeBody, InterruptBody, PromptBody, QueueBody, parse_body
from web.state import state_of
from web.webhooks import InvalidWebhook, check_url

routes = web.RouteTableDef()


MAX_QUERY_INT = 2 ** 62
"""Paging numbers beyond this are refused (SQLite integers are 64-bit)."""


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("invalid_request", f"Query parameter {name!r} must be an integer", raw) from None
    if abs(value) > MAX_QUERY_INT:
        raise BadRequest("invalid_request", f"Query parameter {name!r} is out of range", raw)
    return value


def prompt_of(body: PromptBody) -> Any:
    """The prompt of a ``/prompt``-shaped body: ``prompt``, or a bare UI workflow posted whole."""
    prompt = body.prompt
    if prompt is None and is_ui_workflow(body.model_extra):
        prompt = dict(body.model_extra or {})
    if prompt is None:
        raise BadRequest("no_prompt", "No prompt provided", "No prompt provided", node_errors={})
    return prompt


def checked_extra_data(extra_data: dict[str, Any], webhook: Any = None) -> dict[str, Any]:
    """``extra_data`` with a valid ``webhook`` URL (from the body's field or ``extra_data``), or a 400."""
    extra = dict(extra_data)
    if webhook is not None:
        extra["webhook"] = webhook
    if "webhook" in extra and extra["webhook"] is not None:
        try:
            extra["webhook"] = check_url(extra["webhook"])
        except InvalidWebhook as exc:
            raise BadRequest("invalid_webhook", "Invalid webhook URL", str(exc), node_errors={}) from None
    return extra


async def submit(request: web.Request, body: PromptBody, extra_data: dict[str, Any]) -> Any:
    return await state_of(request).api.submit(
        prompt_of(body), client_id=body.client_id, extra_data=extra_data, front=body.front, number=body.number,
        partial_targets=body.partial_execution_targets, prompt_id=body.prompt_id, owner=owner_of(request))


@routes.get("/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": state_of(request).api.queue_remaining}})


@routes.post("/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    body = await parse_body(request, PromptBody, node_errors=True)
    result = await submit(request, body, checked_extra_data(body.extra_data))
    return web.json_response(result.response(), status=200 if result.ok else 400)


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    snapshot = await state_of(request).api.queue(owner=owner_of(request))
    return web.json_response({"queue_running": [j.queue_item() for j in snapshot.running],
                              "queue_pending": [j.queue_item() for j in snapshot.pending]})


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    api = state_of(request).api
    body = await parse_body(request, QueueBody)
    owner = owner_of(request)
    if body.clear:
        await api.clear_pending(owner=owner)
    if body.delete:
        await api.delete_pending(body.delete, owner=owner)
    return web.Response()


@routes.post("/interrupt")
async def post_interrupt(request: web.Request) -> web.Response:
    try:
        body = await parse_body(request, InterruptBody, empty_ok=True)
    except web.HTTPBadRequest:  # ComfyUI treats an unreadable body as "interrupt whatever runs"
        body = InterruptBody()
    await state_of(request).api.interrupt(body.prompt_id, owner=owner_of(request))
    return web.Response()


@routes.post("/free")
async def post_free(request: web.Request) -> web.Response:
    body = await parse_body(request, FreeBody, empty_ok=True)
    await state_of(request).api.free(unload_models=body.unload_models, free_memory=body.free_memory)
    return web.Response()


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    max_items = _int_query(request, "max_items", None)
    offset = _int_query(request, "offset", -1)
    if max_items is not None and max_items < 0:
        raise BadRequest("invalid_request", "max_items must be >= 0", str(max_items))
    page = await state_of(request).api.history(max_items=max_items, offset=offset, owner=owner_of(request))
    return web.json_response({job.prompt_id: job.history_entry() for job in page.jobs})


@routes.get("/history/{prompt_id}")
async def get_history_item(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    job = await state_of(request).api.get(prompt_id, owner=owner_of(request))
    if job is None:
        return web.json_response({}, status=404)
    if not job.status.is_finished:
        return web.json_response({}, headers={"X-Job-Status": job.status.value})
    return web.json_response({prompt_id: job.history_entry()}, headers={"X-Job-Status": job.status.value})


@routes.post("/history")
async def post_history(request: web.Request) -> web.Response:
    api = state_of(request).api
    body = await parse_body(request, QueueBody)
    owner = owner_of(request)
    if body.clear:
        await api.clear_history(owner=owner)
    if body.delete:
        await api.delete_history(body.delete, owner=owner)
    return web.Response()

