"""Cross-cutting HTTP behaviour: cache headers and the cross-origin guard.

* Cache headers follow ComfyUI's rules, so the frontend's hashed assets cache while its
  entry points (``.js``/``.css``/``index*.json``) are revalidated on every load.
* The origin guard is ComfyUI's defence against drive-by requests: a web page on another
  origin must not be able to queue prompts or read files.  Whenever a request carries an
  ``Origin`` header (browsers add it to cross-origin fetches, form posts and WebSocket
  handshakes), it must name the host the request was sent to (``X-Forwarded-Host`` when a
  proxy set it, else ``Host``; ports compared when both carry one) — on every address, not
  only on loopback as in ComfyUI, because off loopback a session cookie is at stake: a page on
  another port of the same host is "same-site" and would otherwise ride on it.  Origins listed
  with ``--enable-cors-header`` are let through with CORS headers; nothing else is.
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


def same_origin(origin: str, host_header: str) -> bool:
    """Whether an ``Origin`` names the host (and port, when both carry one) of ``host_header``."""
    host, host_port = _split_host(host_header)
    try:
        parsed = urlsplit(origin)
        origin_host = (parsed.hostname or "").lower()
        origin_port = str(parsed.port) if parsed.port else None
    except ValueError:
        return False
    if host_port is None or origin_port is None:
        host_port = origin_port = None
    return bool(origin_host) and (origin_host, origin_port) == (host, host_port)


CORS_HEADERS = {"Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, PATCH, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, Authorization, Comfy-User",
                "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}


def origin_guard(allowed_origins: tuple[str, ...] = ()) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware: same-origin requests pass, listed origins get CORS headers, others 403."""
    allowed = {o.rstrip("/").lower() for o in allowed_origins}

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        host_header = request.headers.get("X-Forwarded-Host") or request.headers.get("Host")
        if not origin or not host_header or same_origin(origin, host_header):
            return await handler(request)
        if origin.rstrip("/").lower() in allowed:
            headers = {"Access-Control-Allow-Origin": origin, **CORS_HEADERS}
            if request.method == "OPTIONS":  # a preflight: answered before authentication
                return web.Response(status=204, headers=headers)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                exc.headers.update(headers)
                raise
            response.headers.update(headers)
            return response
        raise web.HTTPForbidden(text='{"error": {"type": "forbidden", "message": "Cross-origin request refused", '
                                     '"details": "", "extra_info": {}}}', content_type="application/json")

    return guard
