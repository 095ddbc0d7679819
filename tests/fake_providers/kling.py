"""Fake Kling API: self-signed JWT checked with PyJWT, ``POST /v1/videos/{kind}``,
``GET /v1/videos/{kind}/{task_id or external_task_id}``; Kling's ``{code, message, data}`` envelope."""
from __future__ import annotations

import time
import uuid

import jwt
from aiohttp import web

from tests.fake_providers.core import FakeJob, FakeProvider


class FakeKling(FakeProvider):
    name = "kling"

    def __init__(self, *, access_key: str = "ak-test-0123456789", secret_key: str = "sk-test-secret-0123456789abcdef0123456789",
                 **kw) -> None:
        super().__init__(key=secret_key, **kw)
        self.access_key = access_key
        self.secret_key = secret_key
        self.tokens: list[dict] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/videos/{kind}", self.submit, name="submit")
        app.router.add_get("/v1/videos/{kind}/{id}", self.status, name="status")

    def _auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, self.secret_key, algorithms=["HS256"], options={"require": ["iss", "exp", "nbf"]})
        except jwt.PyJWTError as exc:
            return self._envelope(1004, f"Auth failed: {type(exc).__name__}", status=401)
        if claims["iss"] != self.access_key:
            return self._envelope(1002, "Auth failed: unknown access key", status=401)
        if not 1500 <= claims["exp"] - time.time() <= 1800 + 5:
            return self._envelope(1004, "Auth failed: token lifetime", status=401)
        self.tokens.append(claims)
        return None

    @staticmethod
    def _envelope(code: int, message: str, data: dict | None = None, status: int = 200) -> web.Response:
        return web.json_response({"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": data},
                                 status=status)

    def _task(self, job: FakeJob) -> dict:
        phase, _ = job.phase(time.monotonic())
        status = {"queued": "submitted", "running": "processing", "ok": "succeed"}.get(phase, "failed")
        data = {"task_id": job.id, "task_status": status, "created_at": 0, "updated_at": 0,
                "task_info": {"external_task_id": job.extra.get("external")}}
        if phase == "ok":
            data["task_result"] = {"videos": [{"id": f"v-{job.id}", "url": self.file_url(job), "duration": "5.1"}]}
        elif phase == "reject":
            data["task_status_msg"] = job.outcome.message or "Failure to pass the risk control system"
        elif phase == "fail":
            data["task_status_msg"] = job.outcome.message or "Internal error"
        return data

    async def submit(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        kind = request.match_info["kind"]
        if kind not in ("text2video", "image2video"):
            return self._envelope(1203, "unknown endpoint", status=404)
        body = await request.json()
        if len(body.get("prompt", "")) > (2500 if kind == "text2video" else 500):
            return self._envelope(1201, "prompt too long", status=400)
        if body.get("duration") not in ("5", "10") or body.get("mode") not in ("std", "pro"):
            return self._envelope(1201, "invalid duration or mode", status=400)
        if kind == "image2video" and (not body.get("image") or str(body["image"]).startswith("data:")):
            return self._envelope(1201, "image must be raw base64 without a data: prefix", status=400)
        external = body.get("external_task_id")
        if external and any(j.extra.get("external") == external for j in list(self.jobs.values())):
            return self._envelope(1201, "external_task_id already exists", status=400)
        job = self.new_job(body)
        job.extra.update(kind=kind, external=external)
        return self._envelope(0, "SUCCEED", {"task_id": job.id, "task_status": "submitted", "created_at": 0})

    async def status(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        key = request.match_info["id"]
        job = self.job(key) or next((j for j in list(self.jobs.values()) if j.extra.get("external") == key), None)
        if job is None or job.extra.get("kind") != request.match_info["kind"]:
            return self._envelope(1203, "task not found", status=404)
        return self._envelope(0, "SUCCEED", self._task(job))
