"""Fake fal.ai queue (Pika 2.2 models): ``POST /{model}``, ``GET …/requests/{id}/status``,
``GET …/requests/{id}`` (the result), ``PUT …/requests/{id}/cancel``; ``Authorization: Key <key>``."""
from __future__ import annotations

import time

from aiohttp import web

from tests.fake_providers.core import FakeJob, FakeProvider

MODELS = {"fal-ai/pika/v2.2/text-to-video", "fal-ai/pika/v2.2/image-to-video"}
RATIOS = {"16:9", "9:16", "1:1", "4:5", "5:4", "3:2", "2:3"}


class FakeFal(FakeProvider):
    name = "fal"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/{app:.+}/requests/{id}/status", self.status, name="status")
        app.router.add_put("/{app:.+}/requests/{id}/cancel", self.cancel, name="cancel")
        app.router.add_get("/{app:.+}/requests/{id}", self.result, name="result")
        app.router.add_post("/{model:.+}", self.submit, name="submit")

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Key {self.key}":
            return web.json_response({"detail": "Unauthorized: invalid key"}, status=401)
        return None

    async def submit(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        model = request.match_info["model"]
        if model not in MODELS:
            return web.json_response({"detail": "Application not found"}, status=404)
        body = await request.json()
        errors = []
        if body.get("resolution") not in ("720p", "1080p"):
            errors.append({"loc": ["body", "resolution"], "msg": "unexpected value", "type": "value_error"})
        if body.get("duration") not in (5, 10):
            errors.append({"loc": ["body", "duration"], "msg": "unexpected value", "type": "value_error"})
        if model.endswith("text-to-video") and body.get("aspect_ratio") not in RATIOS:
            errors.append({"loc": ["body", "aspect_ratio"], "msg": "unexpected value", "type": "value_error"})
        if model.endswith("image-to-video") and not str(body.get("image_url", "")).startswith("data:image/"):
            errors.append({"loc": ["body", "image_url"], "msg": "invalid image", "type": "value_error"})
        if errors:
            return web.json_response({"detail": errors}, status=422)
        job = self.new_job(body)
        base = f"{self.url}/fal-ai/pika/requests/{job.id}"
        return web.json_response({"request_id": job.id, "response_url": base, "status_url": f"{base}/status",
                                  "cancel_url": f"{base}/cancel", "queue_position": 0})

    def _lookup(self, request: web.Request) -> FakeJob | None:
        return self.job(request.match_info["id"])

    async def status(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self._lookup(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        phase, _ = job.phase(time.monotonic())
        if phase == "queued":
            return web.json_response({"status": "IN_QUEUE", "queue_position": 2, "response_url": ""}, status=202)
        if phase == "running":
            return web.json_response({"status": "IN_PROGRESS", "logs": [{"message": "rendering"}]}, status=202)
        return web.json_response({"status": "COMPLETED", "logs": []})

    async def result(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self._lookup(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        phase, _ = job.phase(time.monotonic())
        if phase == "ok":
            return web.json_response({"video": {"url": self.file_url(job), "content_type": "video/mp4"}})
        if phase == "reject":
            return web.json_response({"detail": [{"loc": ["body", "prompt"], "type": "content_policy_violation",
                                                  "msg": job.outcome.message or "The content could not be processed "
                                                                                "because it contained material "
                                                                                "flagged by a content checker."}]},
                                     status=422)
        if phase == "cancelled":
            return web.json_response({"detail": "Request was cancelled"}, status=400)
        if phase == "fail":
            return web.json_response({"detail": job.outcome.message or "Internal Server Error"}, status=500)
        return web.json_response({"detail": "Request is still in progress"}, status=400)

    async def cancel(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self._lookup(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        phase, _ = job.phase(time.monotonic())
        if phase != "queued":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        self.cancel_job(job)
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)
