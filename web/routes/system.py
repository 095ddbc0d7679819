"""Server facts and node/model catalogues: system_stats, features, extensions, i18n,
object_info, embeddings, models, experiment/models, view_metadata, workflow templates.

Everything that lists folders or reads files runs off the event loop (``api.run_blocking``
or a façade method); model listings come from the mtime-cached listings validation uses too.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from aiohttp import web

from graph_runtime.paths import MODEL_EXTENSIONS, PathEscapeError, safe_join
from web.bodies import json_error
from web.state import WebState, state_of

routes = web.RouteTableDef()

HIDDEN_MODEL_FOLDERS = ("configs", "custom_nodes")
TEMPLATE_DIR_NAMES = ("example_workflows", "example", "examples", "workflow", "workflows")
LOCALE_FILES = {"main.json": None, "nodeDefs.json": "nodeDefs", "commands.json": "commands",
                "settings.json": "settings"}
MAX_SAFETENSORS_HEADER = 16 << 20


def features(state: WebState) -> dict[str, Any]:
    return {"supports_preview_metadata": True, "max_upload_size": state.max_upload_bytes}


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    state = state_of(request)

    def collect() -> dict[str, Any]:  # probes devices and memory: off the loop
        stats = state.sysinfo.stats()
        stats["models"] = state.runtime.memory_stats()  # what the model manager holds, where, and its budget
        return stats

    return web.json_response(await state.api.run_blocking(collect))


@routes.get("/features")
async def get_features(request: web.Request) -> web.Response:
    return web.json_response(features(state_of(request)))


def extension_scripts(state: WebState) -> list[str]:
    """URLs of every ``.js`` file under the extension directories (ours and custom nodes')."""
    from urllib.parse import quote

    urls = []
    for name, root in state.extension_dirs.items():
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.js")):
            urls.append(f"/extensions/{quote(name)}/{path.relative_to(root).as_posix()}")
    return urls


@routes.get("/extensions")
async def get_extensions(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.json_response(await state.api.run_blocking(extension_scripts, state))


def _custom_packs(state: WebState) -> list[Path]:
    packs = []
    for directory in state.paths.custom_nodes_dirs:
        if directory.is_dir():
            packs += [p for p in sorted(directory.iterdir()) if p.is_dir() and not p.name.startswith((".", "__"))]
    return packs


@routes.get("/i18n")
async def get_i18n(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.json_response(await state.api.run_blocking(_translations, state))


def _translations(state: WebState) -> dict[str, dict[str, Any]]:
    """Translations shipped by custom node packs (``locales/<lang>/*.json``), merged per language."""
    merged: dict[str, dict[str, Any]] = {}
    for pack in _custom_packs(state):
        locales = pack / "locales"
        if not locales.is_dir():
            continue
        for lang_dir in sorted(p for p in locales.iterdir() if p.is_dir()):
            target = merged.setdefault(lang_dir.name, {})
            for filename, key in LOCALE_FILES.items():
                try:
                    data = json.loads((lang_dir / filename).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if not isinstance(data, dict):
                    continue
                if key is None:
                    target.update(data)
                else:
                    target.setdefault(key, {}).update(data)
    return merged


@routes.get("/object_info")
async def get_object_info(request: web.Request) -> web.Response:
    return web.json_response(await state_of(request).api.object_info())


@routes.get("/object_info/{node_class}")
async def get_node_info(request: web.Request) -> web.Response:
    name = request.match_info["node_class"]
    info = await state_of(request).api.node_info(name)
    return web.json_response({} if info is None else {name: info})


@routes.get("/embeddings")
async def get_embeddings(request: web.Request) -> web.Response:
    names = await state_of(request).api.list_models("embeddings")
    return web.json_response([os.path.splitext(n)[0] for n in names])


@routes.get("/models")
async def get_model_folders(request: web.Request) -> web.Response:
    return web.json_response(list(state_of(request).paths.folders))


@routes.get("/models/{folder}")
async def get_models(request: web.Request) -> web.Response:
    state = state_of(request)
    folder = request.match_info["folder"]
    if folder not in state.paths.folders:
        return json_error(404, "not_found", "Unknown model folder", folder)
    return web.json_response(await state.api.list_models(folder))


@routes.get("/experiment/models")
async def get_experiment_models(request: web.Request) -> web.Response:
    paths = state_of(request).paths
    return web.json_response([{"name": name, "folders": [str(d) for d in dirs]}
                              for name, dirs in paths.folders.items() if name not in HIDDEN_MODEL_FOLDERS])


@routes.get("/experiment/models/{folder}")
async def get_experiment_folder(request: web.Request) -> web.Response:
    state = state_of(request)
    folder = request.match_info["folder"]
    if folder not in state.paths.folders:
        return json_error(404, "not_found", "Unknown model folder", folder)
    return web.json_response(await state.api.run_blocking(_model_entries, state.paths.folders[folder]))


def _model_entries(roots: list[Path]) -> list[dict[str, Any]]:
    entries = []
    for index, root in enumerate(roots):
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith(".") or Path(fn).suffix.lower() not in MODEL_EXTENSIONS:
                    continue
                full = Path(dirpath, fn)
                try:
                    st = full.stat()
                except OSError:
                    continue
                entries.append({"name": full.relative_to(root).as_posix(), "pathIndex": index,
                                "modified": st.st_mtime, "created": st.st_ctime, "size": st.st_size})
    return entries


PREVIEW_SUFFIXES = (".webp", ".png", ".jpg", ".jpeg", ".gif")


@routes.get("/experiment/models/preview/{folder}/{path_index}/{filename:.+}")
async def model_preview(request: web.Request) -> web.StreamResponse:
    """A model's preview picture (``<name>.png`` or ``<name>.preview.png`` … next to it), as WebP."""
    state = state_of(request)
    paths = state.paths
    folder, filename = request.match_info["folder"], request.match_info["filename"]
    try:
        root = paths.folders[folder][int(request.match_info["path_index"])]
    except (KeyError, IndexError, ValueError):
        return json_error(404, "not_found", "Unknown model folder or path index", folder)
    try:
        model = safe_join(root, filename)
    except PathEscapeError as exc:
        return json_error(403, "forbidden", "Invalid path", str(exc))
    body = await state.api.run_blocking(_preview_webp, model)
    if body is None:
        return json_error(404, "not_found", "No preview for this model", filename)
    return web.Response(body=body, content_type="image/webp", headers={"Cache-Control": "public, max-age=3600"})


def _preview_webp(model: Path) -> bytes | None:
    stem = model.with_suffix("")
    for candidate in [stem.with_name(stem.name + s) for s in PREVIEW_SUFFIXES] + \
                     [stem.with_name(stem.name + ".preview" + s) for s in PREVIEW_SUFFIXES]:
        if candidate.is_file():
            try:
                return _to_webp(candidate)
            except (OSError, ValueError):
                return None
    return None


def _to_webp(path: Path) -> bytes:
    import io

    from PIL import Image

    with Image.open(path) as img:
        buf = io.BytesIO()
        img.convert("RGBA" if "A" in img.getbands() else "RGB").save(buf, format="WEBP", quality=80)
    return buf.getvalue()


def read_safetensors_metadata(path: Path) -> dict[str, Any] | None:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length > MAX_SAFETENSORS_HEADER:
            return None
        header = json.loads(fh.read(length))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


@routes.get("/view_metadata/{folder}")
async def view_metadata(request: web.Request) -> web.Response:
    state = state_of(request)
    paths = state.paths
    folder = request.match_info["folder"]
    filename = request.query.get("filename", "")
    if folder not in paths.folders or not filename.endswith(".safetensors"):
        return json_error(404, "not_found", "No such safetensors file", f"{folder}/{filename}")

    def read() -> dict[str, Any] | None | bool:
        path = paths.model_path(folder, filename)
        if path is None or not path.is_file():
            return False
        return read_safetensors_metadata(path)

    try:
        meta = await state.api.run_blocking(read)
    except (OSError, ValueError) as exc:
        return json_error(400, "invalid_file", "Not a readable safetensors file", str(exc))
    if meta is False:
        return json_error(404, "not_found", "No such safetensors file", f"{folder}/{filename}")
    if not meta:
        return json_error(404, "not_found", "The file has no metadata", filename)
    return web.json_response(meta)


@routes.get("/global_subgraphs")
async def global_subgraphs(request: web.Request) -> web.Response:
    return web.json_response({})


def _template_sources(state: WebState) -> dict[str, Path]:
    """Module name → directory of example workflows (ours, then custom node packs')."""
    sources: dict[str, Path] = {}
    if state.default_workflow is not None and state.default_workflow.parent.is_dir():
        sources["genesis"] = state.default_workflow.parent
    for pack in _custom_packs(state):
        for name in TEMPLATE_DIR_NAMES:
            if (pack / name).is_dir():
                sources[pack.name] = pack / name
                break
    return sources


def _is_ui_workflow(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")).get("nodes"), list)
    except (OSError, ValueError, AttributeError):
        return False


def _template_names(state: WebState, module: str, directory: Path) -> list[str]:
    if module == "genesis" and state.default_workflow is not None:
        # workflows/ may also hold API-format files: list the UI-format ones, the default first
        default = state.default_workflow.stem
        others = sorted(p.stem for p in directory.glob("*.json") if p.stem != default and _is_ui_workflow(p))
        return [default, *others]
    return sorted(p.stem for p in directory.glob("*.json"))


def _all_template_names(state: WebState) -> dict[str, list[str]]:
    result = {}
    for module, directory in _template_sources(state).items():
        names = _template_names(state, module, directory)
        if names:
            result[module] = names
    return result


@routes.get("/workflow_templates")
async def workflow_templates(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.json_response(await state.api.run_blocking(_all_template_names, state))


@routes.get("/workflow_templates/{module}/{name}")
async def workflow_template_file(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    module, name = request.match_info["module"], request.match_info["name"]
    directory = _template_sources(state).get(module)
    if directory is None:
        return json_error(404, "not_found", "Unknown template module", module)
    try:
        path = safe_join(directory, name)
    except PathEscapeError as exc:
        return json_error(403, "forbidden", "Invalid path", str(exc))
    if not path.is_file() or path.suffix != ".json" or \
            path.stem not in await state.api.run_blocking(_template_names, state, module, directory):
        return json_error(404, "not_found", "Template not found", request.match_info["name"])
    return web.FileResponse(path)
