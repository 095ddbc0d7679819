"""Users, settings and user files (``/users``, ``/settings``, ``/userdata``, ``/v2/userdata``).

``/userdata/{file}`` takes the file as ONE path segment: clients encode ``/`` as ``%2F``
(``workflows%2Fa.json``).  The server decodes it, and once more if a ``%`` remains (as
ComfyUI does), then refuses anything that would leave the user's directory (403).

Which user: ``default`` in single-user mode; with ``--multi-user``, the token's user when
tokens are in force (see :mod:`web.auth`), else ComfyUI's ``Comfy-User`` header.  Every file
operation runs off the event loop.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from aiohttp import web

from graph_runtime.paths import PathEscapeError
from web.auth import AUTH, acting_user, principal_of
from web.bodies import BadRequest, NewUserBody, SettingsBody, json_error, parse_body, parse_json_value
from web.state import state_of
from web.userdata import DEFAULT_USER, EMPTY_SLOTS, FileExists, UnknownUser, file_info

routes = web.RouteTableDef()


def _flag(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    return raw.lower() in ("true", "1", "yes")


async def _user(request: web.Request, *, status: int = 403) -> str:
    state = state_of(request)
    users = state.users
    token_user = acting_user(request)
    if token_user is not None:  # a token names the user (an admin may choose one)
        if not users.multi_user:
            return DEFAULT_USER
        await state.api.run_blocking(users.ensure_user, token_user)
        return token_user
    try:
        return await state.api.run_blocking(users.user_for, request.headers.get("Comfy-User"))
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
    state = state_of(request)
    if acting_user(request) is not None and state.users.multi_user:
        # The token already names the user: the frontend must not ask for one.
        return web.json_response({"storage": "server", "migrated": True})
    return web.json_response(await state.api.run_blocking(state.users.users_info))


@routes.post("/users")
async def post_users(request: web.Request) -> web.Response:
    body = await parse_body(request, NewUserBody)
    if request.app[AUTH].required and not principal_of(request).admin:
        return json_error(403, "forbidden", "Only an admin token may create users", "users come from tokens.json")
    state = state_of(request)
    try:
        user_id = await state.api.run_blocking(state.users.create_user, body.username.strip())
    except FileExists:
        return web.json_response({"error": "Duplicate username."}, status=400)
    return web.json_response(user_id)


# -- settings ------------------------------------------------------------------------------------

@routes.get("/settings")
async def get_settings(request: web.Request) -> web.Response:
    user = await _user(request, status=401)
    state = state_of(request)
    return web.json_response(await state.api.run_blocking(state.users.settings, user))


@routes.get("/settings/{id}")
async def get_setting(request: web.Request) -> web.Response:
    user = await _user(request, status=401)
    state = state_of(request)
    settings = await state.api.run_blocking(state.users.settings, user)
    return web.json_response(settings.get(request.match_info["id"]))


@routes.post("/settings")
async def post_settings(request: web.Request) -> web.Response:
    user = await _user(request, status=401)
    body = await parse_body(request, SettingsBody)
    state = state_of(request)
    await state.api.run_blocking(state.users.update_settings, user, body.values())
    return web.Response()


@routes.post("/settings/{id}")
async def post_setting(request: web.Request) -> web.Response:
    user = await _user(request, status=401)
    setting_id = request.match_info["id"].strip()
    if not setting_id:
        raise BadRequest("invalid_request", "No setting id given")
    value = await parse_json_value(request)
    state = state_of(request)
    await state.api.run_blocking(state.users.update_settings, user, {setting_id: value})
    return web.Response()


# -- user files ----------------------------------------------------------------------------------

@routes.get("/userdata")
async def list_userdata(request: web.Request) -> web.Response:
    directory = request.query.get("dir")
    if not directory:
        return json_error(400, "invalid_request", "Directory not provided", "add ?dir=<directory>")
    user = await _user(request)
    state = state_of(request)
    try:
        files = await state.api.run_blocking(
            state.users.list_files, user, directory, recurse=_flag(request, "recurse", False),
            full_info=_flag(request, "full_info", False), split=_flag(request, "split", False))
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    except (FileNotFoundError, NotADirectoryError):
        return json_error(404, "not_found", "Directory not found", directory)
    return web.json_response(files)


@routes.get("/v2/userdata")
async def list_userdata_v2(request: web.Request) -> web.Response:
    user = await _user(request)
    relative = request.query.get("path", "")
    state = state_of(request)
    try:
        entries = await state.api.run_blocking(state.users.list_v2, user, relative)
    except PathEscapeError as exc:
        return json_error(400, "invalid_request", "Invalid path", str(exc))
    except FileNotFoundError:
        return json_error(404, "not_found", "Path not found", relative)
    except NotADirectoryError:
        return json_error(400, "invalid_request", "Path is not a directory", relative)
    return web.json_response(entries)


def _existing_file(users: Any, user: str, name: str) -> Any:
    path = users.resolve(user, name)
    return path if path.is_file() else None


@routes.get("/userdata/{file}")
async def get_userdata(request: web.Request) -> web.StreamResponse:
    user = await _user(request)
    name = _file_param(request)
    state = state_of(request)
    try:
        path = await state.api.run_blocking(_existing_file, state.users, user, name)
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    if path is None:
        if name in EMPTY_SLOTS:
            body, ctype = EMPTY_SLOTS[name]
            return web.Response(body=body, content_type=ctype, headers={"Cache-Control": "no-cache"})
        return json_error(404, "not_found", "File not found", name)
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


@routes.get("/user.css")
async def user_css(request: web.Request) -> web.StreamResponse:
    """The stylesheet ``index.html`` links (``./user.css``): the user's own, else an empty one."""
    state = state_of(request)
    try:
        user = await _user(request)
    except web.HTTPException:
        user = DEFAULT_USER
    path = await state.api.run_blocking(_existing_file, state.users, user, "user.css")
    if path is not None:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": "text/css"})
    return web.Response(body=b"", content_type="text/css", headers={"Cache-Control": "no-cache"})


def _written(request: web.Request, info: dict[str, Any]) -> web.Response:
    if _flag(request, "full_info", False):
        return web.json_response(info)
    return web.json_response(info["path"])


def _write(users: Any, user: str, name: str, data: bytes, overwrite: bool) -> dict[str, Any]:
    path = users.write(user, name, data, overwrite=overwrite)
    return file_info(path, users.user_dir(user).resolve())


@routes.post("/userdata/{file}")
async def post_userdata(request: web.Request) -> web.Response:
    state = state_of(request)
    user = await _user(request)
    name = _file_param(request)
    data = await request.read()
    try:
        info = await state.api.run_blocking(_write, state.users, user, name, data,
                                            _flag(request, "overwrite", True))
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    except FileExists:
        return json_error(409, "conflict", "File already exists", name)
    except OSError as exc:
        return json_error(400, "write_failed", "Could not write the file", str(exc))
    return _written(request, info)


def _delete(users: Any, user: str, name: str) -> bool:
    path = users.resolve(user, name)
    if not path.is_file():
        return False
    path.unlink()
    return True


@routes.delete("/userdata/{file}")
async def delete_userdata(request: web.Request) -> web.Response:
    user = await _user(request)
    name = _file_param(request)
    state = state_of(request)
    try:
        deleted = await state.api.run_blocking(_delete, state.users, user, name)
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    except OSError as exc:
        return json_error(400, "delete_failed", "Could not delete the file", str(exc))
    if not deleted:
        return json_error(404, "not_found", "File not found", name)
    return web.Response(status=204)


def _move(users: Any, user: str, source: str, dest: str, overwrite: bool) -> dict[str, Any]:
    path = users.move(user, source, dest, overwrite=overwrite)
    return file_info(path, users.user_dir(user).resolve())


@routes.post("/userdata/{file}/move/{dest}")
async def move_userdata(request: web.Request) -> web.Response:
    state = state_of(request)
    user = await _user(request)
    source, dest = _file_param(request, "file"), _file_param(request, "dest")
    try:
        info = await state.api.run_blocking(_move, state.users, user, source, dest,
                                            _flag(request, "overwrite", True))
    except PathEscapeError as exc:
        return _forbidden(str(exc))
    except FileNotFoundError:
        return json_error(404, "not_found", "Source file not found", source)
    except FileExists:
        return json_error(409, "conflict", "File already exists", dest)
    except OSError as exc:
        return json_error(400, "move_failed", "Could not move the file", str(exc))
    return _written(request, info)
