"""Image files: ``GET /view`` and ``POST /upload/image`` / ``/upload/mask``.

Every client-supplied name is resolved with :func:`graph_runtime.paths.safe_join` under the
directory its ``type`` names (output, input or temp): absolute paths, ``..`` and their
URL-encoded forms are refused.  Uploads stream to disk under a size limit (413 beyond it).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import mimetypes
import os
import re
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from graph_runtime.paths import PathEscapeError, safe_join
from web.bodies import BadRequest, json_error
from web.state import WebState, state_of

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

KINDS = ("output", "input", "temp")
_ANNOTATED = re.compile(r"^(.*) \[(input|output|temp)\]$")
_UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                 "application/javascript", "text/css", "image/svg+xml"}
_EXTRA_TYPES = {".webp": "image/webp", ".avif": "image/avif", ".webm": "video/webm", ".mp4": "video/mp4",
                ".flac": "audio/flac", ".safetensors": "application/octet-stream"}
FIELD_LIMIT = 64 << 10


def guess_content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _EXTRA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def content_type_for(name: str) -> str:
    """The type ``/view`` sends: never one a browser would run as a page or script."""
    ctype = guess_content_type(name)
    return "application/octet-stream" if ctype in _UNSAFE_TYPES else ctype


def split_annotation(filename: str, default_kind: str) -> tuple[str, str]:
    match = _ANNOTATED.match(filename)
    return (match.group(1), match.group(2)) if match else (filename, default_kind)


def _check_name(filename: str) -> str:
    """A bare file name (no directories), or a 400."""
    if (not filename or filename in (".", "..") or "/" in filename or "\\" in filename or "\x00" in filename
            or filename.strip() != filename):
        raise BadRequest("invalid_filename", "Invalid file name", repr(filename))
    return filename


def _folder(state: WebState, kind: str, subfolder: str) -> Path:
    if kind not in KINDS:
        raise BadRequest("invalid_type", f"Unknown type {kind!r}", "use output, input or temp")
    base = state.paths.directory_for(kind)
    if not subfolder:
        return base.resolve()
    try:
        return safe_join(base, subfolder)
    except PathEscapeError as exc:
        raise web.HTTPForbidden(text=json.dumps({"error": {"type": "forbidden", "message": str(exc),
                                                           "details": "", "extra_info": {}}}),
                                content_type="application/json") from None


def _cache_control(kind: str) -> str:
    # Output and temp names are never reused for new content; inputs can be overwritten by an
    # upload, so those are revalidated (the ETag makes that cheap).
    return "no-cache" if kind == "input" else "public, max-age=86400"


@routes.get("/view")
async def view(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    query = request.query
    filename = query.get("filename")
    if not filename:
        return json_error(404, "not_found", "No filename given")
    filename, kind = split_annotation(filename, query.get("type") or "output")
    if filename.startswith("/") or ".." in filename or "\\" in filename or "\x00" in filename:
        return json_error(400, "invalid_filename", "Invalid file name", repr(filename))
    name = os.path.basename(filename)

    def locate() -> Path | None:  # resolving symlinks and stat touch the disk: off the loop
        path = _folder(state, kind, query.get("subfolder", "")) / name
        return path if path.is_file() else None

    path = await state.api.run_blocking(locate)
    if path is None:
        return json_error(404, "not_found", "File not found", f"{kind}/{query.get('subfolder', '')}/{name}")
    headers = {"Content-Disposition": f'filename="{_quote_header(name)}"', "Cache-Control": _cache_control(kind)}
    preview = query.get("preview")
    channel = query.get("channel") or ""
    if preview or channel in ("rgb", "a"):
        try:
            body, ctype = await state.api.run_blocking(_transcode, path, preview, channel)
        except Exception as exc:  # noqa: BLE001 - a file Pillow cannot convert (truncated, a bomb, not an image)
            return json_error(415, "unsupported_media", "Cannot convert this file", str(exc))
        return web.Response(body=body, content_type=ctype, headers=headers)
    headers["Content-Type"] = content_type_for(name)
    return web.FileResponse(path, headers=headers)


def _quote_header(name: str) -> str:
    return name.replace("\\", "_").replace('"', "_").replace("\r", "_").replace("\n", "_")


def _transcode(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    """ComfyUI's ``preview=<webp|jpeg>;<quality>`` and ``channel=rgb|a`` conversions."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
    buf = io.BytesIO()
    if preview:
        fmt, _, quality_s = preview.partition(";")
        fmt = fmt.strip().lower()
        try:
            quality = int(quality_s) if quality_s else 90
        except ValueError:
            quality = 90
        if fmt not in ("webp", "jpeg") or "a" in channel:
            fmt = "webp"
        if fmt == "jpeg" or channel == "rgb":
            img = img.convert("RGB")
        img.save(buf, format=fmt.upper(), quality=max(1, min(quality, 100)))
        return buf.getvalue(), f"image/{fmt}"
    if channel == "rgb":
        img.convert("RGB").save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    rgba = img.convert("RGBA")
    alpha = rgba.getchannel("A")
    out = Image.new("RGBA", rgba.size, (0, 0, 0, 0))
    out.putalpha(alpha)
    out.save(buf, format="PNG")
    return buf.getvalue(), "image/png"


# -- uploads -------------------------------------------------------------------------------------

class _Upload:
    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.data: bytes | None = None


async def _read_multipart(request: web.Request, limit: int) -> _Upload:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("invalid_request", "Expected a multipart/form-data body", request.content_type)
    try:
        return await _parts(request, limit)
    except (ValueError, HttpProcessingError) as exc:  # no boundary, truncated body, bad part headers
        raise BadRequest("invalid_request", "Malformed multipart/form-data body", str(exc)) from None


async def _parts(request: web.Request, limit: int) -> _Upload:
    upload = _Upload()
    total = 0
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        chunks = []
        is_file = part.name == "image"
        cap = limit if is_file else FIELD_LIMIT
        while chunk := await part.read_chunk(1 << 16):
            total += len(chunk)
            if total > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=total)
            chunks.append(chunk)
            if not is_file and sum(map(len, chunks)) > cap:
                raise BadRequest("invalid_request", f"Form field {part.name!r} is too long")
        payload = b"".join(chunks)
        if is_file:
            upload.filename = part.filename
            upload.data = payload
        elif part.name:
            upload.fields[part.name] = payload.decode("utf-8", "replace")
    if upload.data is None:
        raise BadRequest("invalid_request", "No image file in the upload", "send the file in the 'image' field")
    if not upload.filename:
        raise BadRequest("invalid_filename", "The uploaded file has no name")
    return upload


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _choose_target(folder: Path, filename: str, data: bytes, overwrite: bool) -> Path:
    """ComfyUI's naming: overwrite, reuse an identical file, or pick ``name (N).ext``."""
    target = folder / filename
    if overwrite or not target.exists():
        return target
    digest = _sha256(data)
    stem, suffix = os.path.splitext(filename)
    n = 0
    while target.exists():
        if target.is_file() and _file_sha256(target) == digest:
            return target
        n += 1
        target = folder / f"{stem} ({n}){suffix}"
    return target


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".upload-{os.getpid()}-{id(data)}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _upload_target(state: WebState, upload: _Upload) -> tuple[Path, str, str, bool]:
    filename = _check_name(upload.filename or "")
    kind = upload.fields.get("type") or "input"
    subfolder = upload.fields.get("subfolder", "")
    folder = _folder(state, kind, subfolder)
    overwrite = upload.fields.get("overwrite", "").lower() in ("true", "1")
    return folder / filename, kind, subfolder, overwrite


@routes.post("/upload/image")
async def upload_image(request: web.Request) -> web.Response:
    state = state_of(request)
    upload = await _read_multipart(request, state.max_upload_bytes)
    wanted, kind, subfolder, overwrite = await state.api.run_blocking(_upload_target, state, upload)
    assert upload.data is not None

    def save() -> Path:
        target = _choose_target(wanted.parent, wanted.name, upload.data, overwrite)
        if not target.exists() or overwrite:
            _write(target, upload.data)
        return target

    target = await _saved(state, save)
    log.info("uploaded %s (%d bytes) to %s", target.name, len(upload.data), kind)
    return web.json_response({"name": target.name, "subfolder": subfolder, "type": kind})


@routes.post("/upload/mask")
async def upload_mask(request: web.Request) -> web.Response:
    state = state_of(request)
    upload = await _read_multipart(request, state.max_upload_bytes)
    wanted, kind, subfolder, overwrite = await state.api.run_blocking(_upload_target, state, upload)
    try:
        ref = json.loads(upload.fields.get("original_ref") or "")
    except ValueError:
        raise BadRequest("invalid_request", "original_ref must be JSON", "{filename, subfolder?, type?}") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str) or not ref["filename"]:
        raise BadRequest("invalid_request", "original_ref needs a filename", "{filename, subfolder?, type?}")
    ref_name, ref_kind = split_annotation(ref["filename"], str(ref.get("type") or "output"))

    def locate() -> Path | None:
        path = _folder(state, ref_kind, str(ref.get("subfolder") or "")) / _check_name(ref_name)
        return path if path.is_file() else None

    original = await state.api.run_blocking(locate)
    if original is None:
        return json_error(404, "not_found", "The original image does not exist", f"{ref_kind}/{ref_name}")
    assert upload.data is not None
    try:
        data = await state.api.run_blocking(_apply_mask, original, upload.data)
    except Exception as exc:  # noqa: BLE001 - any image the decoder refuses is the client's problem
        raise BadRequest("invalid_image", "Cannot read the uploaded mask or the original image", str(exc)) from None

    def save() -> Path:
        target = _choose_target(wanted.parent, wanted.name, data, overwrite)
        _write(target, data)
        return target

    target = await _saved(state, save)
    return web.json_response({"name": target.name, "subfolder": subfolder, "type": kind})


async def _saved(state: WebState, save: Any) -> Path:
    """Run ``save`` off the loop; a name that collides with a folder (or the reverse) is a 409."""
    try:
        return await state.api.run_blocking(save)
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
        raise web.HTTPConflict(text=json.dumps({"error": {
            "type": "conflict", "message": "A file and a folder would have the same name",
            "details": str(exc), "extra_info": {}}}), content_type="application/json") from None


def _apply_mask(original: Path, mask_bytes: bytes) -> bytes:
    """The original image with its alpha replaced by the mask's alpha, PNG text chunks kept."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(original) as img:
        img.load()
        info: dict[str, Any] = dict(img.info)
    with Image.open(io.BytesIO(mask_bytes)) as mask:
        mask.load()
    alpha = mask.getchannel("A") if "A" in mask.getbands() else mask.convert("L")
    if alpha.size != img.size:
        alpha = alpha.resize(img.size)
    rgba = img.convert("RGBA")
    rgba.putalpha(alpha)
    meta = PngInfo()
    for key, value in info.items():
        if isinstance(value, str):
            meta.add_text(key, value)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG", pnginfo=meta, compress_level=4)
    return buf.getvalue()
