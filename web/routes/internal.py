"""``/internal/*`` (no ``/api`` twin, as in ComfyUI): logs, folder paths, data-folder listings."""
from __future__ import annotations

from pathlib import Path

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
    state = state_of(request)
    return web.json_response(await state.api.run_blocking(_newest_first, state.paths.directory_for(kind)))


def _newest_first(folder: Path) -> list[str]:
    """File names directly in ``folder``, most recently modified first."""
    if not folder.is_dir():
        return []
    entries = []
    for p in folder.iterdir():
        try:
            if p.is_file() and not p.name.startswith("."):
                entries.append((p.stat().st_mtime, p.name))
        except OSError:  # removed while listing
            continue
    return [name for _, name in sorted(entries, reverse=True)]
