"""Read a workflow from any file a ComfyUI user shares.

Accepted inputs:

* API-format JSON: ``{node_id: {"class_type", "inputs", ...}}``;
* UI-format JSON: an object with a ``nodes`` list;
* a ``POST /prompt`` body (``{"prompt": ..., "extra_data": {"extra_pnginfo": {"workflow": ...}}}``),
  a history entry ``[number, prompt_id, prompt, extra_data, outputs]``, or ``{"workflow": {...}}``;
* images: PNG ``prompt``/``workflow`` text chunks (tEXt, zTXt, iTXt), WebP/JPEG EXIF strings.

Both formats are kept when present: the embedded ``prompt`` is exactly what ran, the ``workflow``
is what the user edits; the caller chooses (:meth:`LoadedWorkflow.to_api_prompt`).
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from PIL import UnidentifiedImageError

from graph_runtime.workflow_files.errors import WorkflowFormatError
from graph_runtime.workflow_files.png_chunks import read_image_texts
from graph_runtime.workflow_files.ui_to_api import convert_ui_to_api

log = logging.getLogger(__name__)


@dataclass
class LoadedWorkflow:
    """What one file contained.

    ``source`` is the container: ``"json"`` or the image format (``"png"``, ``"webp"``, ``"jpeg"``).
    ``extra`` holds other JSON metadata found next to the workflow (other ``extra_pnginfo`` keys).
    """

    api_prompt: dict[str, Any] | None
    ui_workflow: dict[str, Any] | None
    source: str
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_api_prompt(self, node_defs: Mapping[str, Mapping[str, Any]], *,
                      prefer_embedded: bool = True) -> dict[str, Any]:
        """The prompt to run: the embedded API prompt, or the UI workflow converted with ``node_defs``."""
        if self.api_prompt is not None and (prefer_embedded or self.ui_workflow is None):
            return copy.deepcopy(self.api_prompt)
        if self.ui_workflow is None:
            raise WorkflowFormatError("the file holds neither an API prompt nor a UI workflow")
        return convert_ui_to_api(self.ui_workflow, node_defs)


def is_ui_workflow(data: Any) -> bool:
    """UI format: an object with a ``nodes`` list."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list)


def is_api_prompt(data: Any) -> bool:
    """API format: a non-empty object of node objects, at least one carrying ``class_type``.

    (The frontend sends nodes of unknown classes without ``class_type``, so ``inputs`` alone
    also counts for the others.)
    """
    if not isinstance(data, Mapping) or not data or "nodes" in data:
        return False
    if not all(isinstance(v, Mapping) and ("class_type" in v or "inputs" in v) for v in data.values()):
        return False
    return any("class_type" in v for v in data.values())


def classify_json(data: Any, *, source: str = "json", path: Path | None = None) -> LoadedWorkflow:
    """Recognise one parsed JSON document; raises :class:`WorkflowFormatError` if it is no workflow."""
    if is_ui_workflow(data):
        return LoadedWorkflow(None, dict(data), source, path)
    if is_api_prompt(data):
        return LoadedWorkflow(dict(data), None, source, path)
    if isinstance(data, Mapping) and is_api_prompt(data.get("prompt")):
        extra_data = data.get("extra_data") if isinstance(data.get("extra_data"), Mapping) else {}
        return _with_pnginfo(dict(data["prompt"]), extra_data.get("extra_pnginfo") or {}, source, path,
                             fallback_workflow=data.get("workflow"))
    if isinstance(data, Mapping) and is_ui_workflow(data.get("workflow")):
        return LoadedWorkflow(None, dict(data["workflow"]), source, path)
    if isinstance(data, list) and len(data) >= 4 and is_api_prompt(data[2]):
        extra_data = data[3] if isinstance(data[3], Mapping) else {}
        return _with_pnginfo(dict(data[2]), extra_data.get("extra_pnginfo") or {}, source, path)
    raise WorkflowFormatError("not a ComfyUI workflow: expected a UI workflow (with 'nodes') or an API "
                              "prompt (node objects with 'class_type')")


def _with_pnginfo(prompt: dict[str, Any], pnginfo: Any, source: str, path: Path | None,
                  fallback_workflow: Any = None) -> LoadedWorkflow:
    pnginfo = pnginfo if isinstance(pnginfo, Mapping) else {}
    workflow = pnginfo.get("workflow", fallback_workflow)
    extra = {k: v for k, v in pnginfo.items() if k != "workflow"}
    return LoadedWorkflow(prompt, dict(workflow) if is_ui_workflow(workflow) else None, source, path, extra)


def _parse_json_text(key: str, text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{where}: the '{key}' metadata is not valid JSON ({exc})") from None


def load_image_workflow(path: Path) -> LoadedWorkflow:
    """Read the ``prompt``/``workflow`` metadata an image carries."""
    try:
        fmt, texts = read_image_texts(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise WorkflowFormatError(f"{path}: not a readable image ({exc})") from None
    api_prompt = ui_workflow = None
    if "prompt" in texts:
        value = _parse_json_text("prompt", texts["prompt"], str(path))
        if is_api_prompt(value):
            api_prompt = dict(value)
        else:
            log.info("%s: 'prompt' metadata is not an API prompt; ignored", path)
    if "workflow" in texts:
        value = _parse_json_text("workflow", texts["workflow"], str(path))
        if is_ui_workflow(value):
            ui_workflow = dict(value)
        else:
            log.info("%s: 'workflow' metadata is not a UI workflow; ignored", path)
    if api_prompt is None and ui_workflow is None:
        raise WorkflowFormatError(f"{path}: the image carries no ComfyUI workflow metadata")
    extra: dict[str, Any] = {}
    for key, text in texts.items():
        if key in ("prompt", "workflow"):
            continue
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(value, (dict, list)):
            extra[key] = value
    return LoadedWorkflow(api_prompt, ui_workflow, fmt or "image", path, extra)


def load_workflow_file(path: str | Path) -> LoadedWorkflow:
    """Load a workflow from a JSON file or an image with embedded metadata.

    The content decides, not the extension: a file starting like JSON is parsed as JSON,
    anything else is opened as an image.
    """
    path = Path(path)
    try:
        head = path.read_bytes()[:64].lstrip()
    except OSError as exc:
        raise WorkflowFormatError(f"{path}: cannot read ({exc})") from None
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head[:1] in (b"{", b"["):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WorkflowFormatError(f"{path}: invalid JSON ({exc})") from None
        return classify_json(data, source="json", path=path)
    return load_image_workflow(path)
