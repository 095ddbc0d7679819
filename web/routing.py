"""Mounting route tables the way ComfyUI does: every API route also answers under ``/api``.

ComfyUI registers each API route twice (``/prompt`` and ``/api/prompt``): the official
frontend calls the ``/api`` form, while scripts and third-party clients call the bare one.
Route modules declare their handlers once in an :class:`aiohttp.web.RouteTableDef` and
:func:`mount` adds both forms.
"""
from __future__ import annotations

from aiohttp import web


def mount(app: web.Application, table: web.RouteTableDef, *, api_twin: bool = True) -> None:
    """Add every route of ``table`` to ``app`` (plus its ``/api`` twin unless ``api_twin`` is false)."""
    for route in table:
        if not isinstance(route, web.RouteDef):
            raise TypeError(f"only plain routes can be mounted, not {route!r}")
        kwargs = dict(route.kwargs)
        if api_twin:
            app.router.add_route(route.method, "/api" + route.path, route.handler, **kwargs)
        app.router.add_route(route.method, route.path, route.handler, **kwargs)
