"""IMAGE tensors → what providers accept (PNG/JPEG bytes, base64, ``data:`` URIs), and the image
checks providers would otherwise fail on after taking the request.

Local images are sent inline (``data:`` URIs or base64), never as URLs on this machine: providers
fetch only public HTTPS URLs, and this server must not be exposed to make them reachable.
"""
from __future__ import annotations

import base64
import io
from typing import Any

from graph_runtime.context import NodeError


def first_image(image: Any, input_name: str, node: str) -> Any:
    """The first image ``[H, W, C]`` of an IMAGE batch; a batch of several is refused (one frame)."""
    if image is None:
        raise NodeError(f"{node}: input '{input_name}' is empty; connect an IMAGE", input_name=input_name)
    if getattr(image, "ndim", 0) == 4:
        if image.shape[0] != 1:
            raise NodeError(f"{node}: input '{input_name}' has {image.shape[0]} images; the provider takes one "
                            "(pick one with an image-from-batch node)", input_name=input_name)
        image = image[0]
    return image


def encode_image(image: Any, *, fmt: str = "PNG", max_bytes: int | None = None) -> tuple[bytes, str]:
    """``(bytes, mime)`` of one ``[H, W, C]`` image; PNG, or JPEG (quality 95 → 70) when PNG is too big."""
    from nodes.image import tensor_to_pil

    pil = tensor_to_pil(image).convert("RGB")
    buffer = io.BytesIO()
    if fmt.upper() == "PNG":
        pil.save(buffer, format="PNG", compress_level=4)
        if max_bytes is None or buffer.tell() <= max_bytes:
            return buffer.getvalue(), "image/png"
    for quality in (95, 85, 70):
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        if max_bytes is None or buffer.tell() <= max_bytes:
            break
    return buffer.getvalue(), "image/jpeg"


def data_uri(image: Any, *, max_bytes: int | None = None) -> str:
    data, mime = encode_image(image, max_bytes=max_bytes)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def base64_image(image: Any, *, max_bytes: int | None = None) -> tuple[str, str]:
    """``(base64 text without a data: prefix, mime)``."""
    data, mime = encode_image(image, max_bytes=max_bytes)
    return base64.b64encode(data).decode("ascii"), mime


def check_image(image: Any, *, node: str, input_name: str, min_side: int = 1, max_side: int | None = None,
                min_aspect: float | None = None, max_aspect: float | None = None,
                exact_size: tuple[int, int] | None = None) -> None:
    """Raise a NodeError naming the input when the provider would refuse this image."""
    h, w = int(image.shape[0]), int(image.shape[1])
    if exact_size is not None and (w, h) != exact_size:
        raise NodeError(f"{node}: input '{input_name}' is {w}×{h}; this size needs exactly "
                        f"{exact_size[0]}×{exact_size[1]} (resize it first)", input_name=input_name)
    if min(w, h) < min_side:
        raise NodeError(f"{node}: input '{input_name}' is {w}×{h}; the provider needs at least {min_side} px on "
                        "each side", input_name=input_name)
    if max_side is not None and max(w, h) > max_side:
        raise NodeError(f"{node}: input '{input_name}' is {w}×{h}; the provider accepts at most {max_side} px on "
                        "a side", input_name=input_name)
    aspect = w / h
    if (min_aspect is not None and aspect < min_aspect) or (max_aspect is not None and aspect > max_aspect):
        raise NodeError(f"{node}: input '{input_name}' has aspect ratio {aspect:.2f} ({w}×{h}); the provider "
                        f"accepts {min_aspect:.2f} to {max_aspect:.2f}", input_name=input_name)
