"""Fake Gemini API for Veo: ``POST /models/{model}:predictLongRunning``, ``GET /{operation name}``,
``GET /files/{id}:download?alt=media`` (the key is required on every call, downloads included)."""
from __future__ import annotations

import time

from aiohttp import web

from tests.fake_providers.core import FakeJob, FakeProvider

MODELS = {"veo-2.0-generate-001", "veo-3.0-generate-001", "veo-3.0-fast-generate-001", "veo-3.1-generate-preview",
          "veo-3.1-fast-generate-preview"}
DEVELOPER_API_REFUSES = {"seed", "generateAudio", "fps", "outputGcsUri", "compressionQuality"}


class FakeGemini(FakeProvider):
    name = "gemini"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/models/{spec}", self.submit, name="submit")
        app.router.add_get("/models/{model}/operations/{op}", self.status, name="status")

    def endpoint_of(self, request: web.Request) -> str:
        if request.path.startswith("/files/"):
            return "download"
        return super().endpoint_of(request)

    def _auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-goog-api-key") != self.key:
            return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                "message": "API key not valid. Please pass a valid API key."}},
                                     status=400)
        return None

    def file_authorized(self, request: web.Request) -> bool:
        return request.headers.get("x-goog-api-key") == self.key

    def file_url(self, job: FakeJob) -> str:
        return f"{self.url}/files/{job.id}.mp4:download?alt=media"

    async def submit(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        model, _, method = request.match_info["spec"].partition(":")
        if method != "predictLongRunning" or model not in MODELS:
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND", "message": "model not found"}},
                                     status=404)
        body = await request.json()
        params = body.get("parameters") or {}
        bad = sorted(DEVELOPER_API_REFUSES & set(params))
        if bad:
            return web.json_response({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                "message": f"{bad[0]} parameter is not supported in Gemini API."}},
                                     status=400)
        job = self.new_job(body)
        job.extra["model"] = model
        return web.json_response({"name": f"models/{model}/operations/{job.id}"})

    async def status(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self.job(request.match_info["op"])
        name = f"models/{request.match_info['model']}/operations/{request.match_info['op']}"
        if job is None:
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND", "message": "not found"}},
                                     status=404)
        phase, _ = job.phase(time.monotonic())
        if phase in ("queued", "running"):
            return web.json_response({"name": name} if phase == "queued" else {"name": name, "metadata": {}})
        if phase == "ok":
            return web.json_response({"name": name, "done": True, "response": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                "generateVideoResponse": {"generatedSamples": [{"video": {"uri": self.file_url(job)}}]}}})
        if phase == "reject":
            return web.json_response({"name": name, "done": True, "response": {"generateVideoResponse": {
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": [job.outcome.message or "The prompt could not be submitted."]}}})
        return web.json_response({"name": name, "done": True, "error": {
            "code": 13, "message": job.outcome.message or "Internal error", "status": "INTERNAL"}})
