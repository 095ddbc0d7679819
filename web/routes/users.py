"""Users, settings and user files (``/users``, ``/settings``, ``/userdata``, ``/v2/userdata``).

``/userdata/{file}`` takes the file as ONE path segment: clients encode ``/`` as ``%2F``
(``workflows%2Fa.json``).  The server decodes it, and once more if a ``%`` remains (as
ComfyUI does), then refuses anything that would leave the user's directory (403).
"""
from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from aiohttp import web

from graph_runtime.paths import PathEscapeError
from web.bodies import BadRequest, NewUserBody, SettingsBody, json_error, parse_body, parse_json_value
from web.state import state_of
from web.userdata import DEFAULT_USER, EMPTY_SLOTS, FileExists, UnknownUser, file_info

routes = web.RouteTableDef()


def _flag(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    return raw.lower() in ("true", "1", "yes")


def _user(request: web.Request, *, status: int = 403) -> str:
    try:
        return state_of(request).users.user_for(request.headers.get("Comfy-User"))
    except UnknownUser:
        if status == 401:
            raise web.HTTPUnauthorized(text='{"error": {"type": "unknown_user", "message": "Unknown user", '
                                            '"details": "", "extra_info": {}}}', content_type="application/json")
        raise web.HTTPForbidden(text='{"error": {"type": "unknown_user", "message": "Unknown user", '
                                     '"details": "", "extra_info": {}}}', content_type="application/json")


def _forbidden(detail: str) -> web.Response:
    return json_error(403, "forbidden", "Invalid path", detail)


def _file_param(request: web.Request, key: str = "file") -> str:
    value = request.match_info.get(key, "")
    if "%" in value:
        value = unquote(value)
    if not value.strip():
        raise BadRequest("invalid_request", "No file name given")
    return value


# -- users ---------------------------------------------------------------------------------------

@routes.get("/users")
async def get_users(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).users.users_info())


@routes.post("/users")
async def post_users(request: web.Request) -> web.Response:
    body = await parse_body(request, NewUserBody)
    try:
        user_id = state_of(request).users.create_user(body.username.strip())
    except FileExists:
        return web.json_response({"error": "Duplicate username."}, status=400)
    return web.json_response(user_id)


# -- settings ------------------------------------------------------------------------------------

@routes.get("/settings")
async def get_settings(request: web.Request) -> web.Response:
    user = _user(request, status=401)
    return web.json_response(state_of(request).users.settings(user))


@routes.get("/settings/{id}")
async def get_setting(request: web.Request) -> web.Response:
    user = _user(request, status=401)
    return web.json_response(state_of(request).users.settings(user).get(request.match_info["id"]))


@routes.post("/settings")
async def post_settings(request: web.Request) -> web.Response:
    user = _user(request, status=401)
    body = await parse_body(request, SettingsBody)
    state_of(request).users.update_settings(user, body.values())
    return web.Response()


@routes.post("/settings/{id}")
async def post_setting(request: web.Request) -> web.Response:
    user = _user(request, status=401)
    setting_id = request.match_info["id"].strip()
    if not setting_id:
        raise BadRequest("invalid_request", "No setting id given")
    value = await parse_json_value(request)
    state_of(request).users.update_settings(user, {setting_id: value})
    return web.Response()


# -- user files ----------------------------------------------------------------------------------

@routes.get("/userdata")
async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir")
    if not directory:
        return json_error(400, "invalid_request", "Directory not provided", "add ?dir=<directory>")
    user = _user(request)
    try:
        files = state_of(request).users.list_files(
            user, directory, recurse=_flag(request, "recurse", False), full_info=_flag(request, "full_info", False),
            split=_flag(request, "split", False))
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    except FileNotFoundError:
        return json_error(404, "not_found", "Directory not found", directory)
    return web.json_response(files)


@routes.get("/v2/userdata")
async def list_userdata_v2(request: web.Request) -> web.Response:
    user = _user(request)
    relative = request.query.get("path", "")
    try:
        entries = state_of(request).users.list_v2(user, relative)
    except PathEscapeError as exc:
        return json_error(400, "invalid_request", "Invalid path", str(exc))
    except FileNotFoundError:
        return json_error(404, "not_found", "Path not found", relative)
    except NotADirectoryError:
        return json_error(400, "invalid_request", "Path is not a directory", relative)
    return web.json_response(entries)


@routes.get("/userdata/{file}")
async def get_userdata(request: web.Request) -> web.StreamResponse:
    user = _user(request)
    name = _file_param(request)
    try:
        path = state_of(request).users.resolve(user, name)
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    if not path.is_file():
        if name in EMPTY_SLOTS:
            body, ctype = EMPTY_SLOTS[name]
            return web.Response(body=body, content_type=ctype, headers={"Cache-Control": "no-cache"})
        return json_error(404, "not_found", "File not found", name)
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


@routes.get("/user.css")
async def user_css(request: web.Request) -> web.StreamResponse:
    """The stylesheet ``index.html`` links (``./user.css``): the user's own, else an empty one."""
    users = state_of(request).users
    try:
        path = users.resolve(users.user_for(request.headers.get("Comfy-User")), "user.css")
    except UnknownUser:
        path = users.resolve(DEFAULT_USER, "user.css")
    if path.is_file():
        return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": "text/css"})
    return web.Response(body=b"", content_type="text/css", headers={"Cache-Control": "no-cache"})


def _written(request: web.Request, path: Any, root: Any) -> web.Response:
    if _flag(request, "full_info", False):
        return web.json_response(file_info(path, root))
    return web.json_response(path.relative_to(root).as_posix())


@routes.post("/userdata/{file}")
async def post_userdata(request: web.Request) -> web.Response:
    users = state_of(request).users
    user = _user(request)
    name = _file_param(request)
    data = await request.read()
    try:
        path = users.write(user, name, data, overwrite=_flag(request, "overwrite", True))
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    except FileExists:
        return json_error(409, "conflict", "File already exists", name)
    except OSError as exc:
        return json_error(400, "write_failed", "Could not write the file", str(exc))
    return _written(request, path, users.user_dir(user).resolve())


@routes.delete("/userdata/{file}")
async def delete_userdata(request: web.Request) -> web.Response:
    user = _user(request)
    name = _file_param(request)
    try:
        path = state_of(request).users.resolve(user, name)
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    if not path.is_file():
        return json_error(404, "not_found", "File not found", name)
    path.unlink()
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}")
async def move_userdata(request: web.Request) -> web.Response:
    users = state_of(request).users
    user = _user(request)
    source, dest = _file_param(request, "file"), _file_param(request, "dest")
    try:
        path = users.move(user, source, dest, overwrite=_flag(request, "overwrite", True))
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    except FileNotFoundError:
        return json_error(404, "not_found", "Source file not found", source)
    except FileExists:
        return json_error(409, "conflict", "File already exists", dest)
    return _written(request, path, users.user_dir(user).resolve())
