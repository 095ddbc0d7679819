"""Luma Dream Machine API (``api.lumalabs.ai/dream-machine/v1``).

Submit ``POST /generations/video`` → a Generation; poll ``GET /generations/{id}`` → ``state`` in
queued | dreaming | completed (+ ``assets.video``) | failed (+ ``failure_reason``); cancel
``DELETE /generations/{id}``.  Key frames are ``{"type": "image", "url": …}``; local images go as
``data:`` URIs.  Luma has no seed (the node's seed only decides when to run again).
"""
from __future__ import annotations

from typing import Any, Mapping

from nodes.video_api.protocol import HttpRequest, ProviderAdapter, RemoteStatus, State, Submitted

MODELS = ("ray-2", "ray-flash-2", "ray-1-6")
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "21:9", "9:21")
RESOLUTIONS = ("540p", "720p", "1080p", "4k")
DURATIONS = ("5s", "9s")
MIN_PROMPT = 3
MAX_PROMPT = 5000

_STATES = {"queued": State.QUEUED, "dreaming": State.RUNNING, "completed": State.SUCCEEDED, "failed": State.FAILED}


class LumaAdapter(ProviderAdapter):
    name = "luma"
    title = "Luma"
    key_names = ("LUMAAI_API_KEY",)
    base_url_name = "LUMAAI_BASE_URL"
    default_base_url = "https://api.lumalabs.ai/dream-machine/v1"
    poll_interval = 5.0
    deadline = 1200.0

    def auth_headers(self) -> dict[str, str]:
        key = self.source.secret(*self.key_names)
        return {"Authorization": f"Bearer {key.reveal() if key else ''}"}

    def generate(self, *, prompt: str, model: str, aspect_ratio: str, resolution: str, duration: str, loop: bool,
                 frame0: str | None = None, frame1: str | None = None,
                 concepts: list[str] | None = None) -> HttpRequest:
        body: dict[str, Any] = {"prompt": prompt, "model": model, "aspect_ratio": aspect_ratio, "loop": bool(loop)}
        if model != "ray-1-6":  # ray-1-6 has one resolution and length; sending them is an error
            body["resolution"] = resolution
            body["duration"] = duration
        keyframes = {}
        if frame0:
            keyframes["frame0"] = {"type": "image", "url": frame0}
        if frame1:
            keyframes["frame1"] = {"type": "image", "url": frame1}
        if keyframes:
            body["keyframes"] = keyframes
        if concepts:
            body["concepts"] = [{"key": c} for c in concepts]
        return HttpRequest("POST", "generations/video", json=body)

    def parse_submit(self, body: Any) -> Submitted:
        return Submitted(str(body["id"]), {"id": str(body["id"])})

    def poll(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("GET", f"generations/{handle['id']}")

    def parse_status(self, body: Any) -> RemoteStatus:
        raw = str(body.get("state", "")).lower()
        assets = body.get("assets") or {}
        return RemoteStatus(_STATES.get(raw, State.QUEUED), detail=raw, error_message=body.get("failure_reason"),
                            result={"video": assets.get("video")})

    def cancel(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("DELETE", f"generations/{handle['id']}")

    def download(self, handle: Mapping[str, Any], status: RemoteStatus) -> HttpRequest:
        url = status.result.get("video")
        if not url:
            from nodes.video_api.errors import ProviderFailedError

            raise ProviderFailedError(f"Luma: generation {handle['id']} completed without a video", provider=self.title)
        return HttpRequest("GET", url, authenticated=False)
