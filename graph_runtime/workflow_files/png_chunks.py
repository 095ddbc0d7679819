"""Workflow metadata embedded in images, written and read the way ComfyUI does it.

Writing (SaveImage / PreviewImage): a ``prompt`` tEXt chunk holding ``json.dumps(prompt)``, then
one tEXt chunk per key of ``extra_pnginfo`` (normally just ``workflow``), in that order, with
Python's default JSON separators.  ``json.dumps`` escapes non-ASCII, so tEXt (Latin-1) is safe.

Reading accepts tEXt, zTXt and iTXt chunks (Pillow decodes all three, including chunks stored
after the image data), and for WebP/JPEG the EXIF convention of ComfyUI's animated-WebP saver
(``"prompt:{json}"``, ``"workflow:{json}"`` in string tags such as Make/Model).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Mapping

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def png_text_chunks(prompt: Mapping[str, Any] | None, workflow: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> PngInfo:
    """Build the PNG text chunks ComfyUI's SaveImage writes.

    ``extra`` is the prompt's ``extra_pnginfo``; ``workflow``, when given, is its ``workflow``
    entry (it takes that key's place, first among the extra keys, as the frontend sends it).
    """
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    entries: dict[str, Any] = {}
    if workflow is not None:
        entries["workflow"] = workflow
    for key, value in (extra or {}).items():
        if key == "workflow" and workflow is not None:
            continue
        entries[key] = value
    for key, value in entries.items():
        info.add_text(str(key), json.dumps(value))
    return info


def _exif_texts(image: Image.Image) -> dict[str, str]:
    """``{"prompt": "...", "workflow": "..."}`` from ``key:json`` EXIF string tags."""
    found: dict[str, str] = {}
    try:
        exif = image.getexif()
    except Exception:  # noqa: BLE001 - a broken EXIF block simply carries no workflow
        return found
    for value in exif.values():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str) or ":" not in value:
            continue
        key, _, rest = value.partition(":")
        key = key.strip().lower()
        if key in ("prompt", "workflow") and rest.lstrip().startswith("{"):
            found.setdefault(key, rest.strip().rstrip("\x00"))
    return found


def read_image_texts(source: str | Path | IO[bytes]) -> tuple[str, dict[str, str]]:
    """Return ``(image_format, {key: text})`` of all text metadata in an image.

    PNG text chunks come first; EXIF ``prompt:``/``workflow:`` strings fill keys not found there.
    """
    with Image.open(source) as image:
        fmt = (image.format or "").lower()
        # Chunks before the image data are in ``info`` without decoding pixels (ComfyUI writes
        # its chunks there); ``.text`` decodes the image to reach chunks stored after it, so it
        # is only consulted when the early chunks hold no workflow.
        texts: dict[str, str] = {str(k): v for k, v in image.info.items() if isinstance(v, str)}
        if fmt == "png" and not {"prompt", "workflow"} & set(texts):
            chunk_texts = getattr(image, "text", None)
            if isinstance(chunk_texts, Mapping):
                texts.update({str(k): str(v) for k, v in chunk_texts.items()})
        if not {"prompt", "workflow"} <= set(texts):  # EXIF access decodes a PNG too
            for key, value in _exif_texts(image).items():
                texts.setdefault(key, value)
    return fmt, texts
