"""Runway developer API (``api.dev.runwayml.com``, API version 2024-11-06).

Submit ``POST /v1/image_to_video`` → ``{"id"}``; poll ``GET /v1/tasks/{id}`` → ``status`` in
PENDING | THROTTLED | RUNNING (+ ``progress`` 0..1) | SUCCEEDED (+ ``output`` URLs) | FAILED
(+ ``failure``, ``failureCode``) | CANCELLED; cancel ``DELETE /v1/tasks/{id}``.  Output URLs are
on Runway's CDN (no auth) and expire in 24–48 h.  Images go as ``data:`` URIs (≤ 5 MB); Runway
fetches only public HTTPS URLs on a domain.
"""
from __future__ import annotations

from typing import Any, Mapping

from nodes.video_api.protocol import HttpRequest, ProviderAdapter, RemoteStatus, State, Submitted

API_VERSION = "2024-11-06"
MAX_PROMPT = 1000  # UTF-16 code units
MAX_DATA_URI_BYTES = 5 << 20
GEN4_RATIOS = ("1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672")
GEN3A_RATIOS = ("768:1280", "1280:768")
DURATIONS = (5, 10)
MAX_SEED = 4294967295

_STATES = {"PENDING": State.QUEUED, "THROTTLED": State.QUEUED, "RUNNING": State.RUNNING,
           "SUCCEEDED": State.SUCCEEDED, "FAILED": State.FAILED, "CANCELLED": State.CANCELLED}


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class RunwayAdapter(ProviderAdapter):
    name = "runway"
    title = "Runway"
    key_names = ("RUNWAYML_API_SECRET",)
    base_url_name = "RUNWAYML_BASE_URL"
    default_base_url = "https://api.dev.runwayml.com"
    poll_interval = 6.0  # the SDK's wait_for_task_output
    deadline = 1200.0

    def auth_headers(self) -> dict[str, str]:
        key = self.source.secret(*self.key_names)
        return {"Authorization": f"Bearer {key.reveal() if key else ''}", "X-Runway-Version": API_VERSION}

    def image_to_video(self, *, model: str, prompt: str, images: list[tuple[str, str]], ratio: str, duration: int,
                       seed: int) -> HttpRequest:
        """``images``: (data URI, position "first" | "last") pairs."""
        body: dict[str, Any] = {"model": model, "promptImage": [{"uri": uri, "position": pos} for uri, pos in images],
                                "ratio": ratio, "duration": int(duration), "seed": int(seed)}
        if prompt:
            body["promptText"] = prompt
        return HttpRequest("POST", "v1/image_to_video", json=body)

    def parse_submit(self, body: Any) -> Submitted:
        return Submitted(str(body["id"]), {"id": str(body["id"])})

    def poll(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("GET", f"v1/tasks/{handle['id']}")

    def parse_status(self, body: Any) -> RemoteStatus:
        raw = str(body.get("status", "")).upper()
        state = _STATES.get(raw, State.QUEUED)
        progress = body.get("progress")
        code = body.get("failureCode")
        return RemoteStatus(state, progress=None if progress is None else float(progress) * 100.0, detail=raw,
                            error_code=None if code is None else str(code), error_message=body.get("failure"),
                            content_rejected=str(code or "").upper().startswith("SAFETY"),
                            result={"output": list(body.get("output") or [])})

    def cancel(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("DELETE", f"v1/tasks/{handle['id']}")

    def download(self, handle: Mapping[str, Any], status: RemoteStatus) -> HttpRequest:
        outputs = status.result.get("output") or []
        if not outputs:
            from nodes.video_api.errors import ProviderFailedError

            raise ProviderFailedError(f"Runway: task {handle['id']} succeeded without an output URL",
                                      provider=self.title)
        return HttpRequest("GET", outputs[0], authenticated=False)
