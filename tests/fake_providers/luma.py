"""Fake Luma Dream Machine API: ``POST /generations/video``, ``GET``/``DELETE /generations/{id}``."""
from __future__ import annotations

import time

from aiohttp import web

from tests.fake_providers.core import FakeJob, FakeProvider

MODELS = {"ray-2", "ray-flash-2", "ray-1-6"}
RATIOS = {"1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21"}


class FakeLuma(FakeProvider):
    name = "luma"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/generations/video", self.submit, name="submit")
        app.router.add_get("/generations/{id}", self.status, name="status")
        app.router.add_delete("/generations/{id}", self.cancel, name="cancel")

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response({"detail": "Invalid authentication credentials"}, status=401)
        return None

    def _generation(self, job: FakeJob) -> dict:
        phase, _ = job.phase(time.monotonic())
        state = {"queued": "queued", "running": "dreaming", "ok": "completed"}.get(phase, "failed")
        out = {"id": job.id, "generation_type": "video", "state": state, "failure_reason": None,
               "created_at": "2025-01-01T00:00:00Z", "assets": None, "model": job.body.get("model"),
               "request": job.body}
        if phase == "ok":
            out["assets"] = {"video": self.file_url(job)}
        elif phase == "reject":
            out["failure_reason"] = job.outcome.message or "400: prompt not allowed because advanced moderation failed"
        elif phase == "fail":
            out["failure_reason"] = job.outcome.message or "Job failed"
        elif phase == "cancelled":
            out["failure_reason"] = "Cancelled by user"
        return out

    async def submit(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        body = await request.json()
        if body.get("model") not in MODELS or body.get("aspect_ratio") not in RATIOS:
            return web.json_response({"detail": "invalid model or aspect_ratio"}, status=400)
        if body.get("model") == "ray-1-6" and ("duration" in body or "resolution" in body):
            return web.json_response({"detail": "ray-1-6 does not take duration or resolution"}, status=400)
        for frame in (body.get("keyframes") or {}).values():
            if not str(frame.get("url", "")).startswith("data:image/"):
                return web.json_response({"detail": "keyframe url must be an image"}, status=400)
        job = self.new_job(body)
        return web.json_response(self._generation(job), status=201)

    async def status(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self.job(request.match_info["id"])
        if job is None:
            return web.json_response({"detail": "Generation not found"}, status=404)
        return web.json_response(self._generation(job))

    async def cancel(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self.job(request.match_info["id"])
        if job is None:
            return web.json_response({"detail": "Generation not found"}, status=404)
        self.cancel_job(job)
        return web.Response(status=204)
