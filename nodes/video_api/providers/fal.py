"""fal.ai's queue API, used for Pika 2.2 (``fal-ai/pika/v2.2/{text,image}-to-video``).

Submit ``POST https://queue.fal.run/{model}`` with the model's JSON input → ``{request_id,
status_url, response_url, cancel_url}``; poll ``GET status_url`` → ``status`` in IN_QUEUE (+
``queue_position``) | IN_PROGRESS | COMPLETED; then ``GET response_url`` → the model's output
(``{"video": {"url"}}``) or an error (FastAPI ``{"detail": [{loc, msg, type}]}``); cancel ``PUT
cancel_url`` (only before the request starts).  Auth: ``Authorization: Key $FAL_KEY``, sent only to
the queue's own origin (the URLs fal returns are used as they are).
"""
from __future__ import annotations

from typing import Any, Mapping

from nodes.video_api.protocol import HttpRequest, ProviderAdapter, RemoteStatus, State, Submitted

PIKA_T2V = "fal-ai/pika/v2.2/text-to-video"
PIKA_I2V = "fal-ai/pika/v2.2/image-to-video"
PIKA_RESOLUTIONS = ("1080p", "720p")
PIKA_DURATIONS = (5, 10)
# Pika on fal takes named aspect ratios; ComfyUI's Pika node gives width / height as a number.
PIKA_ASPECT_RATIOS = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0, "4:5": 4 / 5, "5:4": 5 / 4, "3:2": 3 / 2,
                      "2:3": 2 / 3}
ASPECT_TOLERANCE = 0.02  # relative

_STATES = {"IN_QUEUE": State.QUEUED, "IN_PROGRESS": State.RUNNING, "COMPLETED": State.SUCCEEDED}


def nearest_pika_ratio(value: float) -> str | None:
    """The named ratio within 2 % of ``value`` (width / height), else None."""
    name, ratio = min(PIKA_ASPECT_RATIOS.items(), key=lambda kv: abs(kv[1] - value))
    return name if abs(ratio - value) / ratio <= ASPECT_TOLERANCE else None


class FalAdapter(ProviderAdapter):
    name = "fal"
    title = "Pika (fal)"
    key_names = ("FAL_KEY",)
    base_url_name = "FAL_BASE_URL"
    default_base_url = "https://queue.fal.run"
    poll_interval = 5.0
    deadline = 1200.0

    def auth_headers(self) -> dict[str, str]:
        key = self.source.secret(*self.key_names)
        return {"Authorization": f"Key {key.reveal() if key else ''}"}

    def submit(self, model: str, arguments: dict[str, Any]) -> HttpRequest:
        return HttpRequest("POST", model, json=arguments)

    def parse_submit(self, body: Any) -> Submitted:
        request_id = str(body["request_id"])
        return Submitted(request_id, {"request_id": request_id, "status_url": body["status_url"],
                                      "response_url": body["response_url"], "cancel_url": body.get("cancel_url")})

    def poll(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("GET", str(handle["status_url"]))

    def parse_status(self, body: Any) -> RemoteStatus:
        raw = str(body.get("status", "")).upper()
        position = body.get("queue_position")
        if raw == "COMPLETED" and body.get("error"):
            return RemoteStatus(State.FAILED, detail=raw, error_code=body.get("error_type"),
                                error_message=str(body["error"]))
        return RemoteStatus(_STATES.get(raw, State.QUEUED), detail=raw,
                            queue_position=None if position is None else int(position))

    def result_request(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("GET", str(handle["response_url"]))

    def parse_result(self, body: Any, status: RemoteStatus) -> RemoteStatus:
        url = ((body or {}).get("video") or {}).get("url")
        if not url:
            return RemoteStatus(State.FAILED, error_code="NO_VIDEO", error_message="the result has no video")
        return RemoteStatus(State.SUCCEEDED, progress=100.0, detail=status.detail, result={"url": url})

    def cancel(self, handle: Mapping[str, Any]) -> HttpRequest | None:
        url = handle.get("cancel_url")
        return HttpRequest("PUT", str(url)) if url else None

    def download(self, handle: Mapping[str, Any], status: RemoteStatus) -> HttpRequest:
        return HttpRequest("GET", str(status.result["url"]), authenticated=False)
