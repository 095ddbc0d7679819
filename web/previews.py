"""Binary WebSocket frames for preview images and node text (ComfyUI's protocol).

Frame layout: a big-endian ``uint32`` event type, then the payload.

* type 1 ``PREVIEW_IMAGE``: ``uint32`` image format (1 = JPEG, 2 = PNG), then the image bytes;
* type 3 ``TEXT`` (progress text): ``uint32`` length of the UTF-8 node id, the node id, then
  the UTF-8 text shown on that node (the whole text so far);
* type 4 ``PREVIEW_IMAGE_WITH_METADATA``: ``uint32`` length of a JSON header
  ``{node_id, prompt_id, display_node_id, parent_node_id, real_node_id, image_type}``, the
  header, then the image bytes.  Sent instead of type 1 to clients that announced
  ``supports_preview_metadata`` (the official frontend does).
"""
from __future__ import annotations

import io
import json
import struct
from typing import Any

PREVIEW_IMAGE = 1
PROGRESS_TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
MAX_PREVIEW_SIZE = 512


def to_pil(image: Any) -> Any:
    """A PIL image from a PIL image or an ``(H, W, 3|4)`` uint8 array."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    import numpy as np

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def encode_image(image: Any, image_format: str = "JPEG", max_size: int = MAX_PREVIEW_SIZE) -> tuple[bytes, str]:
    """(bytes, mime type) of a preview, shrunk to fit ``max_size`` (JPEG q95 or fast PNG)."""
    from PIL import ImageOps

    pil = to_pil(image)
    if max(pil.size) > max_size:
        pil = ImageOps.contain(pil, (max_size, max_size))
    buf = io.BytesIO()
    if image_format.upper() == "PNG":
        pil.save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "image/png"
    if pil.mode not in ("RGB", "L"):
        pil = pil.convert("RGB")
    pil.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), "image/jpeg"


def progress_text_frame(node_id: str, text: str) -> bytes:
    """Type 3: ``uint32`` length of the UTF-8 node id, the node id, then the UTF-8 text."""
    node = node_id.encode("utf-8")
    return struct.pack(">II", PROGRESS_TEXT, len(node)) + node + text.encode("utf-8")


def legacy_frame(data: bytes, mime: str) -> bytes:
    return struct.pack(">II", PREVIEW_IMAGE, 2 if mime == "image/png" else 1) + data


def metadata_frame(data: bytes, mime: str, *, node_id: str, prompt_id: str | None, display_node_id: str,
                   parent_node_id: str | None = None, real_node_id: str | None = None) -> bytes:
    header = json.dumps({"node_id": node_id, "prompt_id": prompt_id, "display_node_id": display_node_id,
                         "parent_node_id": parent_node_id, "real_node_id": real_node_id or node_id,
                         "image_type": mime}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(header)) + header + data
