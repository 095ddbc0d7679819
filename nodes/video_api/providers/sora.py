"""OpenAI's Videos API (Sora 2): ``api.openai.com/v1``.

Submit ``POST /videos`` (multipart: ``model``, ``prompt``, ``seconds`` as text, ``size``, optional
``input_reference`` image of exactly the output size) → a Video object; poll ``GET /videos/{id}``
→ ``status`` in queued | in_progress (+ ``progress`` %) | completed | failed (+ ``error {code,
message}``); download ``GET /videos/{id}/content`` with the same key.  Submits carry an
``Idempotency-Key`` header.  ``DELETE`` only removes finished videos, so there is no cancel: an
interrupt stops polling.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from nodes.video_api.protocol import HttpRequest, ProviderAdapter, RemoteStatus, State, Submitted

MODELS = ("sora-2", "sora-2-pro")
SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")
SORA2_SIZES = ("720x1280", "1280x720")
DURATIONS = (4, 8, 12)

_STATES = {"queued": State.QUEUED, "in_progress": State.RUNNING, "completed": State.SUCCEEDED,
           "failed": State.FAILED}


class SoraAdapter(ProviderAdapter):
    name = "openai"
    title = "OpenAI Sora"
    key_names = ("OPENAI_API_KEY",)
    base_url_name = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"
    poll_interval = 8.0  # ComfyUI's value
    deadline = 2400.0
    supports_idempotency = True

    def auth_headers(self) -> dict[str, str]:
        key = self.source.secret(*self.key_names)
        return {"Authorization": f"Bearer {key.reveal() if key else ''}"}

    def create(self, *, model: str, prompt: str, seconds: int, size: str,
               image: tuple[bytes, str] | None) -> HttpRequest:
        form = {"model": model, "prompt": prompt, "seconds": str(int(seconds)), "size": size}
        files = None
        if image is not None:
            data, mime = image
            files = {"input_reference": ("reference." + mime.split("/")[-1], data, mime)}
        return HttpRequest("POST", "videos", form=form, files=files or {})

    def with_idempotency(self, request: HttpRequest, key: str) -> HttpRequest:
        return replace(request, headers={**request.headers, "Idempotency-Key": key})

    def parse_submit(self, body: Any) -> Submitted:
        return Submitted(str(body["id"]), {"id": str(body["id"])})

    def poll(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("GET", f"videos/{handle['id']}")

    def parse_status(self, body: Any) -> RemoteStatus:
        raw = str(body.get("status", "")).lower()
        error = body.get("error") or {}
        progress = body.get("progress")
        return RemoteStatus(_STATES.get(raw, State.QUEUED), detail=raw,
                            progress=None if progress is None else float(progress),
                            error_code=error.get("code"), error_message=error.get("message"))

    def download(self, handle: Mapping[str, Any], status: RemoteStatus) -> HttpRequest:
        return HttpRequest("GET", f"videos/{handle['id']}/content")

    def is_content_rejection(self, code: str | None, message: str) -> bool:
        return code in ("moderation_blocked", "content_policy_violation") or super().is_content_rejection(code, message)
