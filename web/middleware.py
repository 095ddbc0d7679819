"""Cross-cutting HTTP behaviour: cache headers and the cross-origin guard.

* Cache headers follow ComfyUI's rules, so the frontend's hashed assets cache while its
  entry points (``.js``/``.css``/``index*.json``) are revalidated on every load.
* The origin guard is ComfyUI's defence against drive-by requests: a web page on another
  origin must not be able to queue prompts or read files from a server bound to loopback.
  It applies when the ``Host`` is a loopback name and an ``Origin`` header is present; the
  two must name the same host (and port, when both carry one).
"""
from __future__ import annotations

import ipaddress
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@web.middleware
async def cache_control(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        _apply_cache_rules(request, response)
        raise
    _apply_cache_rules(request, response)
    return response


def _apply_cache_rules(request: web.Request, response: web.StreamResponse) -> None:
    path = request.path
    last = path.rsplit("/", 1)[-1]
    if path.endswith((".js", ".css")) or (last.startswith("index") and last.endswith(".json")):
        response.headers.setdefault("Cache-Control", "no-cache")
    elif path.lower().endswith(IMAGE_SUFFIXES):
        status = response.status
        if 200 <= status <= 206 or status in (301, 308):
            response.headers.setdefault("Cache-Control", "public, max-age=86400")
        elif status == 404:
            response.headers.setdefault("Cache-Control", "public, max-age=3600")
        elif status in (302, 303, 307):
            response.headers.setdefault("Cache-Control", "no-cache")


def _split_host(value: str) -> tuple[str, str | None]:
    """``host[:port]`` → (host, port); IPv6 literals keep their brackets stripped."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, port
    return value, None


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def origin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    host_header = request.headers.get("Host")
    origin = request.headers.get("Origin")
    if host_header and origin and request.method != "OPTIONS":
        host, host_port = _split_host(host_header)
        if is_loopback(host):
            parsed = urlsplit(origin)
            origin_host = (parsed.hostname or "").lower()
            origin_port = str(parsed.port) if parsed.port else None
            if host_port is None or origin_port is None:
                host_port = origin_port = None
            if (origin_host, origin_port) != (host, host_port):
                raise web.HTTPForbidden()
    return await handler(request)
