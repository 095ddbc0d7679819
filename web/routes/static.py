"""Static files: the official frontend at ``/``, workflow templates at ``/templates/…`` and
extension scripts at ``/extensions/<name>/…`` (ours and custom node packs' ``WEB_DIRECTORY``).

None of these has an ``/api`` twin.  ``GET /`` always revalidates ``index.html`` so a
frontend upgrade is picked up; the hashed assets below it cache normally.
"""
from __future__ import annotations

import importlib.util
import pkgutil
from functools import lru_cache
from pathlib import Path

from aiohttp import web

from graph_runtime.paths import PathEscapeError, safe_join
from web.bodies import json_error
from web.routes.files import guess_content_type
from web.state import WebState, state_of

routes = web.RouteTableDef()

TEMPLATES_JSON_PACKAGE = "comfyui_workflow_templates_json"
TEMPLATES_MEDIA_PREFIX = "comfyui_workflow_templates_media"
NO_STORE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}


def package_dir(name: str) -> Path | None:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def frontend_root() -> Path | None:
    """``comfyui_frontend_package``'s ``static`` directory (the built frontend)."""
    root = package_dir("comfyui_frontend_package")
    return root / "static" if root is not None and (root / "static" / "index.html").is_file() else None


@lru_cache(maxsize=1)
def template_dirs() -> tuple[Path, ...]:
    """Where ``/templates/<file>`` is looked up: the JSON package first, then every media bundle."""
    dirs: list[Path] = []
    first = package_dir(TEMPLATES_JSON_PACKAGE)
    if first is not None and (first / "templates").is_dir():
        dirs.append(first / "templates")
    media = sorted(m.name for m in pkgutil.iter_modules() if m.name.startswith(TEMPLATES_MEDIA_PREFIX))
    for name in media:
        root = package_dir(name)
        if root is not None and (root / "templates").is_dir():
            dirs.append(root / "templates")
    return tuple(dirs)


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    root = state_of(request).frontend_root
    if root is None:
        return web.Response(status=503, text="The frontend (comfyui-frontend-package) is not installed; "
                                             "the API is available under /api.", content_type="text/plain")
    return web.FileResponse(root / "index.html", headers=NO_STORE)


def _find(dirs: list[Path] | tuple[Path, ...], relative: str) -> Path | None | bool:
    """The first existing file for ``relative`` under ``dirs``; False when the path escapes."""
    for directory in dirs:
        try:
            path = safe_join(directory, relative)
        except PathEscapeError:
            return False
        if path.is_file():
            return path
    return None


@routes.get("/templates/{path:.+}")
async def template_file(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    found = _find(state.template_dirs or template_dirs(), request.match_info["path"])
    if found is False:
        return json_error(403, "forbidden", "Invalid path")
    if found is None:
        raise web.HTTPNotFound()
    return web.FileResponse(found, headers={"Content-Type": guess_content_type(found.name)})


@routes.get("/extensions/{name}/{path:.+}")
async def extension_file(request: web.Request) -> web.StreamResponse:
    state: WebState = state_of(request)
    name, relative = request.match_info["name"], request.match_info["path"]
    candidates: list[Path] = []
    if name in state.extension_dirs:
        candidates.append(state.extension_dirs[name])
    elif state.frontend_root is not None:  # the frontend's own extensions/core shims
        candidates.append(state.frontend_root / "extensions" / name)
    found = _find(candidates, relative)
    if found is False:
        return json_error(403, "forbidden", "Invalid path")
    if found is None:
        raise web.HTTPNotFound()
    return web.FileResponse(found, headers={"Content-Type": guess_content_type(found.name)})
