"""Fake Runway developer API: ``POST /v1/image_to_video``, ``GET``/``DELETE /v1/tasks/{id}``.

Checks what Runway checks: ``Authorization: Bearer <key>``, ``X-Runway-Version: 2024-11-06``,
the model's ratios and durations, prompt length, and that images are ``data:`` URIs (Runway
fetches only public HTTPS URLs, never ``http://127.0.0.1``).
"""
from __future__ import annotations

import time

from aiohttp import web

from tests.fake_providers.core import FakeProvider

RATIOS = {"gen4_turbo": {"1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672"},
          "gen3a_turbo": {"1280:768", "768:1280"}}


class FakeRunway(FakeProvider):
    name = "runway"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/image_to_video", self.submit, name="submit")
        app.router.add_get("/v1/tasks/{id}", self.status, name="status")
        app.router.add_delete("/v1/tasks/{id}", self.cancel, name="cancel")

    def _auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.key}":
            # Runway does not echo keys; echoing it here proves the client redacts what it shows.
            return web.json_response({"error": f"Invalid API key {auth.removeprefix('Bearer ')}"}, status=401)
        if request.headers.get("X-Runway-Version") != "2024-11-06":
            return web.json_response({"error": "Missing or invalid X-Runway-Version header"}, status=400)
        return None

    async def submit(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        body = await request.json()
        model = body.get("model")
        if model not in RATIOS:
            return web.json_response({"error": f"model: invalid value {model!r}"}, status=400)
        if body.get("ratio") not in RATIOS[model]:
            return web.json_response({"error": f"ratio: {body.get('ratio')} is not valid for {model}"}, status=400)
        if body.get("duration") not in (5, 10):
            return web.json_response({"error": "duration: must be 5 or 10"}, status=400)
        if len(body.get("promptText", "")) > 1000:
            return web.json_response({"error": "promptText: too long"}, status=400)
        images = body.get("promptImage") or []
        if not images or any(not str(i.get("uri", "")).startswith("data:image/") for i in images):
            return web.json_response({"error": "promptImage: must be an HTTPS URL or a data URI"}, status=400)
        job = self.new_job(body)
        return web.json_response({"id": job.id})

    async def status(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self.job(request.match_info["id"])
        if job is None:
            return web.json_response({"error": "Task not found"}, status=404)
        phase, progress = job.phase(time.monotonic())
        out = {"id": job.id, "createdAt": "2025-01-01T00:00:00Z"}
        if phase == "queued":
            out["status"] = "THROTTLED" if job.extra.get("throttled") else "PENDING"
        elif phase == "running":
            out.update(status="RUNNING", progress=round(progress, 3))
        elif phase == "ok":
            out.update(status="SUCCEEDED", output=[self.file_url(job)])
        elif phase == "cancelled":
            out["status"] = "CANCELLED"
        else:
            code = job.outcome.code or ("SAFETY.INPUT.TEXT" if phase == "reject" else "INTERNAL.BAD_OUTPUT")
            out.update(status="FAILED", failure=job.outcome.message or "The task failed", failureCode=code)
        return web.json_response(out)

    async def cancel(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self.job(request.match_info["id"])
        if job is None:
            return web.json_response({"error": "Task not found"}, status=404)
        self.cancel_job(job)
        return web.Response(status=204)
