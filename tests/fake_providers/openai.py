"""Fake OpenAI Videos API (Sora 2): ``POST /v1/videos`` (multipart), ``GET /v1/videos/{id}``,
``GET /v1/videos/{id}/content``; Bearer auth on every call; ``Idempotency-Key`` honoured."""
from __future__ import annotations

import email
import email.policy
import time

from aiohttp import web

from tests.fake_providers.core import FakeJob, FakeProvider

SIZES = {"sora-2": {"720x1280", "1280x720"}, "sora-2-pro": {"720x1280", "1280x720", "1024x1792", "1792x1024"}}


def error(message: str, code: str | None, status: int, type_: str = "invalid_request_error",
          param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": param, "code": code}},
                             status=status)


class FakeOpenAI(FakeProvider):
    name = "openai"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.idempotency: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/videos", self.submit, name="submit")
        app.router.add_get("/v1/videos/{id}", self.status, name="status")
        app.router.add_get("/v1/videos/{id}/content", self.content, name="content")

    def _auth(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.key}":
            shown = auth.removeprefix("Bearer ")
            return error(f"Incorrect API key provided: {shown}. You can find your API key at "
                         "https://platform.openai.com/account/api-keys.", "invalid_api_key", 401)
        return None

    def _video(self, job: FakeJob) -> dict:
        phase, progress = job.phase(time.monotonic())
        status = {"queued": "queued", "running": "in_progress", "ok": "completed"}.get(phase, "failed")
        out = {"id": job.id, "object": "video", "model": job.body["model"], "status": status,
               "progress": int(progress * 100) if phase == "running" else (100 if phase == "ok" else 0),
               "created_at": 0, "size": job.body["size"], "seconds": job.body["seconds"], "error": None}
        if phase == "reject":
            out["error"] = {"code": "moderation_blocked",
                            "message": job.outcome.message or "Your request was blocked by our moderation system."}
        elif phase == "fail":
            out["error"] = {"code": job.outcome.code or "internal_error", "message": job.outcome.message or "failed"}
        return out

    async def submit(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        if not request.content_type.startswith("multipart/"):
            return error("Expected multipart/form-data", None, 400)
        fields: dict[str, str] = {}
        reference = None
        raw = await request.read()  # the recording middleware read the stream already
        message = email.message_from_bytes(f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode() + raw,
                                           policy=email.policy.HTTP)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                reference = (part.get_filename(), part.get_payload(decode=True), part.get_content_type())
            else:
                fields[name] = part.get_payload(decode=True).decode()
        model, size = fields.get("model"), fields.get("size")
        if model not in SIZES:
            return error(f"Invalid model {model}", "invalid_value", 400, param="model")
        if size not in SIZES[model]:
            return error(f"Invalid size {size} for {model}", "invalid_value", 400, param="size")
        if fields.get("seconds") not in ("4", "8", "12"):
            return error("Invalid seconds", "invalid_value", 400, param="seconds")
        key = request.headers.get("Idempotency-Key")
        if key and key in self.idempotency:
            return web.json_response(self._video(self.jobs[self.idempotency[key]]))
        job = self.new_job({**fields, "has_reference": reference is not None})
        if key:
            self.idempotency[key] = job.id
        return web.json_response(self._video(job))

    async def status(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        job = self.job(request.match_info["id"])
        if job is None:
            return error("Video not found", "not_found", 404)
        return web.json_response(self._video(job))

    async def content(self, request: web.Request) -> web.StreamResponse:
        refused = self._auth(request)
        if refused:
            return refused
        return await self._file(request)
