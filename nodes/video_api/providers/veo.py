"""Google Veo on the Gemini Developer API (``generativelanguage.googleapis.com/v1beta``).

Submit ``POST /models/{model}:predictLongRunning`` with ``{"instances": [{prompt, image}],
"parameters": {…}}`` → a long-running operation ``{"name": "models/…/operations/…"}``; poll
``GET /{name}`` until ``done: true``, then ``response.generateVideoResponse.generatedSamples[0]
.video.uri`` (downloaded with the same API key) or ``error {code, message}``; videos withheld by
Google's safety filters show as ``raiMediaFilteredCount`` > 0 with reasons.  Auth: the
``x-goog-api-key`` header.  The Developer API refuses ``seed`` and ``generateAudio`` (Vertex-only
parameters): they are not sent, and Veo 3 there always makes audio.  No cancel is documented for
these operations, so an interrupt only stops polling.
"""
from __future__ import annotations

from typing import Any, Mapping

from nodes.video_api.protocol import HttpRequest, ProviderAdapter, RemoteStatus, State, Submitted

# ComfyUI's model names → Gemini API model ids
MODELS = {
    "veo-2.0-generate-001": "veo-2.0-generate-001",
    "veo-3.1-generate": "veo-3.1-generate-preview",
    "veo-3.1-fast-generate": "veo-3.1-fast-generate-preview",
    "veo-3.0-generate-001": "veo-3.0-generate-001",
    "veo-3.0-fast-generate-001": "veo-3.0-fast-generate-001",
}
ASPECT_RATIOS = ("16:9", "9:16")


class VeoAdapter(ProviderAdapter):
    name = "veo"
    title = "Google Veo"
    key_names = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    base_url_name = "GEMINI_BASE_URL"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"
    poll_interval = 10.0  # the SDK suggests 20 s, ComfyUI polls every 9 s
    deadline = 1200.0

    def required_keys(self) -> tuple[str, ...]:
        return ()  # either name will do; see missing_key_message

    def missing_key_message(self) -> str | None:
        if self.source.secret(*self.key_names) is not None:
            return None
        return (f"{self.title} needs an API key: GEMINI_API_KEY (or GOOGLE_API_KEY) is not set; "
                f"{self.source.where()} (the key stays on this server and is sent only to Google)")

    def key_variable(self) -> str:
        key = self.source.secret(*self.key_names)
        return key.name if key else "GEMINI_API_KEY"

    def secrets(self) -> list:
        key = self.source.secret(*self.key_names)
        return [key] if key else []

    def auth_headers(self) -> dict[str, str]:
        key = self.source.secret(*self.key_names)
        return {"x-goog-api-key": key.reveal() if key else ""}

    def generate(self, *, model: str, prompt: str, aspect_ratio: str, duration_seconds: int, negative_prompt: str,
                 enhance_prompt: bool, person_generation: str, image: tuple[str, str] | None) -> HttpRequest:
        """``image``: (base64 text, mime) or None."""
        instance: dict[str, Any] = {"prompt": prompt}
        if image is not None:
            instance["image"] = {"bytesBase64Encoded": image[0], "mimeType": image[1]}
        # The Developer API names: image-to-video allows adults only.
        people = "dont_allow" if person_generation == "BLOCK" else ("allow_adult" if image is not None else "allow_all")
        parameters: dict[str, Any] = {"aspectRatio": aspect_ratio, "durationSeconds": int(duration_seconds),
                                      "personGeneration": people, "sampleCount": 1}
        if negative_prompt:
            parameters["negativePrompt"] = negative_prompt
        if model.startswith("veo-2"):
            parameters["enhancePrompt"] = bool(enhance_prompt)  # Veo 3 always enhances
        return HttpRequest("POST", f"models/{MODELS[model]}:predictLongRunning",
                           json={"instances": [instance], "parameters": parameters})

    def parse_submit(self, body: Any) -> Submitted:
        return Submitted(str(body["name"]), {"name": str(body["name"])})

    def poll(self, handle: Mapping[str, Any]) -> HttpRequest:
        return HttpRequest("GET", str(handle["name"]))

    def parse_status(self, body: Any) -> RemoteStatus:
        if not body.get("done"):
            return RemoteStatus(State.RUNNING if body.get("metadata") else State.QUEUED, detail="done: false")
        error = body.get("error")
        if error:
            code = error.get("status") or error.get("code")
            return RemoteStatus(State.FAILED, error_code=None if code is None else str(code),
                                error_message=error.get("message"))
        result = (body.get("response") or {}).get("generateVideoResponse") or {}
        samples = result.get("generatedSamples") or []
        filtered = int(result.get("raiMediaFilteredCount") or 0)
        if filtered and not samples:
            reasons = "; ".join(result.get("raiMediaFilteredReasons") or []) or "no reason given"
            return RemoteStatus(State.FAILED, error_code="RAI_FILTERED", content_rejected=True,
                                error_message=f"{filtered} video(s) filtered by Google's Responsible AI practices: "
                                              f"{reasons}")
        uri = ((samples[0] if samples else {}).get("video") or {}).get("uri")
        if not uri:
            return RemoteStatus(State.FAILED, error_code="NO_VIDEO", error_message="the operation returned no video")
        return RemoteStatus(State.SUCCEEDED, progress=100.0, result={"uri": uri})

    def download(self, handle: Mapping[str, Any], status: RemoteStatus) -> HttpRequest:
        # Gemini file URIs need the key; the engine adds it only when the URI is on the API's origin.
        return HttpRequest("GET", str(status.result["uri"]))
