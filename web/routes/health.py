"""Probes and metrics: ``/health`` (the process answers), ``/ready`` (it can do work), ``/metrics``.

``/health`` and ``/ready`` answer without a token, for load balancers and orchestrators;
``/metrics`` needs one off loopback unless ``--metrics-public``.  ``/ready`` is 503 with the
failing checks when the database does not take writes, the worker thread is gone or the
models folder is unreadable.
"""
from __future__ import annotations

from aiohttp import web

from web.metrics import metrics_handler
from web.state import state_of

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    checks = await state_of(request).api.ready()
    ok = all(c.ok for c in checks)
    return web.json_response({"ready": ok, "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}},
                             status=200 if ok else 503)


routes.get("/metrics")(metrics_handler)
