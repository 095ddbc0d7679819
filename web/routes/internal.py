"""``/internal/*`` (no ``/api`` twin, as in ComfyUI): logs, folder paths, data-folder listings."""
from __future__ import annotations

from aiohttp import web

from web.bodies import LogsSubscribeBody, json_error, parse_body
from web.routes.files import KINDS
from web.state import state_of

routes = web.RouteTableDef()


@routes.get("/internal/logs")
async def logs(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).logs.text())


@routes.get("/internal/logs/raw")
async def logs_raw(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).logs.raw())


@routes.patch("/internal/logs/subscribe")
async def logs_subscribe(request: web.Request) -> web.Response:
    body = await parse_body(request, LogsSubscribeBody)
    state_of(request).hub.subscribe_logs(body.clientId, body.enabled)
    return web.Response()


@routes.get("/internal/folder_paths")
async def folder_paths(request: web.Request) -> web.Response:
    paths = state_of(request).paths
    result = {name: [str(d) for d in dirs] for name, dirs in paths.folders.items()}
    result["custom_nodes"] = [str(d) for d in paths.custom_nodes_dirs]
    return web.json_response(result)


@routes.get("/internal/files/{directory_type}")
async def files(request: web.Request) -> web.Response:
    kind = request.match_info["directory_type"]
    if kind not in KINDS:
        return json_error(400, "invalid_type", "Invalid directory type", kind)
    folder = state_of(request).paths.directory_for(kind)
    entries = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return web.json_response([p.name for p in entries])
