"""Kling (Kuaishou) video API.

Auth is a JWT the client mints: HS256 signed with ``KLING_SECRET_KEY``, claims ``iss`` =
``KLING_ACCESS_KEY``, ``exp`` = now + 30 min, ``nbf`` = now − 5 s; sent as ``Authorization:
Bearer <jwt>`` and re-minted before it expires.  Submit ``POST /v1/videos/{text2video|
image2video}`` → ``{code, message, data: {task_id, task_status}}``; poll ``GET
/v1/videos/{kind}/{task_id}`` → ``task_status`` in submitted | processing | succeed (+
``task_result.videos[0].url``) | failed (+ ``task_status_msg``).  ``code`` 0 is success; 1000–1004
are auth errors, 1100–1103 account/balance, 1200–1203 parameters, 1301 content policy, 1302/1303
rate limits, 5000+ server errors.  Every submit carries ``external_task_id`` (our idempotency key),
by which a job can be looked up after a crash mid-submit.  There is no cancel endpoint.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Mapping

import jwt

from nodes.video_api.protocol import HttpRequest, ProviderAdapter, RemoteStatus, State, Submitted

MODELS = ("kling-v1", "kling-v1-5", "kling-v1-6", "kling-v2-master", "kling-v2-1", "kling-v2-1-master",
          "kling-v2-5-turbo")
MODES = ("std", "pro")
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
DURATIONS = ("5", "10")
MAX_PROMPT_T2V = 2500
MAX_PROMPT_I2V = 500
TOKEN_LIFETIME = 1800
TOKEN_REFRESH = 1500

_STATES = {"submitted": State.QUEUED, "processing": State.RUNNING, "succeed": State.SUCCEEDED,
           "failed": State.FAILED}
_AUTH_CODES = range(1000, 1005)
_CREDIT_CODES = range(1100, 1104)
_RATE_CODES = (1302, 1303)


class KlingAdapter(ProviderAdapter):
    name = "kling"
    title = "Kling"
    key_names = ("KLING_ACCESS_KEY", "KLING_SECRET_KEY")
    base_url_name = "KLING_BASE_URL"
    default_base_url = "https://api-singapore.klingai.com"
    poll_interval = 16.0  # ComfyUI's value; Kling jobs take minutes
    deadline = 3600.0
    supports_idempotency = True  # external_task_id: a repeated submit is refused as a duplicate

    def __init__(self, source: Any, kind: str = "text2video") -> None:
        super().__init__(source)
        if kind not in ("text2video", "image2video"):
            raise ValueError(f"unknown Kling task kind {kind!r}")
        self.kind = kind
        self._token: tuple[str, float] | None = None

    def token(self) -> str:
        """A JWT for the current keys, re-minted when older than 25 minutes."""
        now = time.time()
        if self._token is not None and now - self._token[1] < TOKEN_REFRESH:
            return self._token[0]
        access = self.source.secret("KLING_ACCESS_KEY")
        secret = self.source.secret("KLING_SECRET_KEY")
        if access is None or secret is None:
            return ""
        token = jwt.encode({"iss": access.reveal(), "exp": int(now) + TOKEN_LIFETIME, "nbf": int(now) - 5},
                           secret.reveal(), algorithm="HS256", headers={"alg": "HS256", "typ": "JWT"})
        self._token = (token, now)
        return token

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def key_variable(self) -> str:
        return "KLING_ACCESS_KEY and KLING_SECRET_KEY"

    def submit(self, body: dict[str, Any]) -> HttpRequest:
        return HttpRequest("POST", f"v1/videos/{self.kind}", json=body)

    def with_idempotency(self, request: HttpRequest, key: str) -> HttpRequest:
        """Kling's idempotency key is the ``external_task_id`` body field (unique per account)."""
        return replace(request, json={**(request.json or {}), "external_task_id": key})

    def recover_submit(self, idempotency_key: str) -> HttpRequest | None:
        """Kling finds a task by the ``external_task_id`` we gave it."""
        return HttpRequest("GET", f"v1/videos/{self.kind}/{idempotency_key}")

    def parse_submit(self, body: Any) -> Submitted:
        data = self._data(body)
        task_id = str(data["task_id"])
        return Submitted(task_id, {"task_id": task_id, "kind": self.kind})

    def _data(self, body: Any) -> dict[str, Any]:
        """``data`` of a Kling envelope; a non-zero ``code`` in a 200 answer is still an error."""
        if not isinstance(body, dict):
            from nodes.video_api.errors import ProviderUnavailableError

            raise ProviderUnavailableError("Kling: unexpected answer", provider=self.title)
        code = body.get("code", 0)
        if code not in (0, None):
            import json

            raise self.http_error(400, json.dumps(body).encode(), "request")
        return dict(body.get("data") or {})

    def poll(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("GET", f"v1/videos/{handle['kind']}/{handle['task_id']}")

    def parse_status(self, body: Any) -> RemoteStatus:
        data = self._data(body)
        raw = str(data.get("task_status", "")).lower()
        videos = ((data.get("task_result") or {}).get("videos")) or []
        message = data.get("task_status_msg")
        return RemoteStatus(_STATES.get(raw, State.QUEUED), detail=raw, error_message=message,
                            content_rejected=self.is_content_rejection(None, str(message or "")),
                            result={"url": videos[0].get("url") if videos else None,
                                    "video_id": videos[0].get("id") if videos else None,
                                    "duration": videos[0].get("duration") if videos else None})

    def download(self, handle: Mapping[str, Any], status: RemoteStatus) -> HttpRequest:
        url = status.result.get("url")
        if not url:
            from nodes.video_api.errors import ProviderFailedError

            raise ProviderFailedError(f"Kling: task {handle['task_id']} succeeded without a video URL",
                                      provider=self.title)
        return HttpRequest("GET", url, authenticated=False)

    # Kling puts its own code in the body of HTTP errors.
    def http_error(self, status: int, body: bytes, what: str) -> Any:
        code, _ = self.error_text(body)
        if code is not None and code.isdigit() and int(code) in _AUTH_CODES:
            status = 401
        return super().http_error(status, body, what)

    def retryable(self, status: int, code: str | None, message: str) -> bool:
        if code is not None and code.isdigit():
            number = int(code)
            if number in _RATE_CODES or number >= 5000:
                return True
            if number in _AUTH_CODES or number in _CREDIT_CODES or 1200 <= number < 1400:
                return False
        return super().retryable(status, code, message)

    def is_out_of_credits(self, code: str | None, message: str) -> bool:
        if code is not None and code.isdigit() and int(code) in _CREDIT_CODES:
            return True
        return super().is_out_of_credits(code, message)

    def is_content_rejection(self, code: str | None, message: str) -> bool:
        if code == "1301":
            return True
        return super().is_content_rejection(code, message) or "risk" in message.lower()
