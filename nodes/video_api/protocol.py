"""What a provider adapter is: a translation table between one provider's wire protocol and the
engine's canonical job model.  Adapters do no I/O; the engine (``engine.py``) sends every request,
retries, polls, cancels and downloads.

Canonical states: ``queued`` (accepted, waiting: Runway PENDING/THROTTLED, fal IN_QUEUE, Kling
submitted, Veo ``done: false`` …), ``running`` (+ progress in percent when the provider tells),
``succeeded`` (a video to download), ``failed`` (provider's code and message; moderation refusals
flagged ``content_rejected``) and ``cancelled``.
"""
from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urljoin, urlsplit

from nodes.video_api.errors import (AuthError, ContentRejectedError, InvalidRequestError, OutOfCreditsError,
                                    ProviderUnavailableError, RateLimitedError, VideoApiError)
from nodes.video_api.settings import Secret, SettingsSource


class State(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP call.  ``url`` is absolute or relative to the provider's base URL.

    Body: ``json``, or ``form`` (urlencoded), or ``form`` + ``files`` (multipart; files are
    ``name: (filename, bytes, content type)``).  Auth headers are added by the engine, and only
    when the URL is on the provider's own origin (never to a CDN link in a response).
    """

    method: str
    url: str
    json: Any = None
    form: Mapping[str, str] | None = None
    files: Mapping[str, tuple[str, bytes, str]] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    authenticated: bool = True


@dataclass(frozen=True)
class RemoteStatus:
    """One poll's answer in canonical form."""

    state: State
    progress: float | None = None  # percent, 0..100
    detail: str | None = None  # the provider's own word for the state ("THROTTLED", "dreaming" …)
    queue_position: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    content_rejected: bool = False
    result: Mapping[str, Any] = field(default_factory=dict)  # what download() needs (URLs, ids)


@dataclass(frozen=True)
class Submitted:
    """The provider accepted a job: its id and what polling, cancelling and downloading need."""

    remote_id: str
    handle: Mapping[str, Any]


class ProviderAdapter(ABC):
    """One provider.  Subclasses set the class attributes and implement the translation methods."""

    name: str = ""  # short id, stored with remote jobs ("runway")
    title: str = ""  # shown to users ("Runway")
    key_names: tuple[str, ...] = ()  # env / secrets.yaml names of the credential(s)
    base_url_name: str = ""  # env / secrets.yaml name of the base URL override
    default_base_url: str = ""
    poll_interval: float = 5.0  # seconds between polls (the provider SDK's or ComfyUI's value)
    deadline: float = 900.0  # seconds from submit to a downloaded video
    supports_idempotency: bool = False  # a retried submit cannot create a second job

    def __init__(self, source: SettingsSource) -> None:
        self.source = source
        self.base_url = (source.get(self.base_url_name) or self.default_base_url).rstrip("/") + "/"
        self.poll_interval = source.number("GENESIS_VIDEO_POLL_INTERVAL") or type(self).poll_interval
        self.deadline = source.number("GENESIS_VIDEO_DEADLINE") or type(self).deadline

    # -- credentials ----------------------------------------------------------------------------
    def missing_key_message(self) -> str | None:
        """None when the credentials are present, else what to set (names the variable)."""
        missing = [n for n in self.required_keys() if self.source.secret(n) is None]
        if not missing:
            return None
        names = " and ".join(missing)
        return (f"{self.title} needs an API key: {names} is not set; {self.source.where()} "
                f"(the key stays on this server and is sent only to {self.title})")

    def required_keys(self) -> tuple[str, ...]:
        return self.key_names

    def secrets(self) -> list[Secret]:
        return [s for s in (self.source.secret(n) for n in self.key_names) if s is not None]

    @abstractmethod
    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request (read the secrets here, at send time)."""

    def key_variable(self) -> str:
        """The variable a user should check when the provider refuses the key."""
        return " / ".join(self.key_names)

    # -- URLs ------------------------------------------------------------------------------------
    def absolute(self, url: str) -> str:
        return url if urlsplit(url).scheme else urljoin(self.base_url, url.lstrip("/"))

    def same_origin(self, url: str) -> bool:
        a, b = urlsplit(self.absolute(url)), urlsplit(self.base_url)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    # -- the protocol ----------------------------------------------------------------------------
    @abstractmethod
    def parse_submit(self, body: Any) -> Submitted:
        """The job id and handle from the submit response."""

    @abstractmethod
    def poll(self, handle: Mapping[str, Any]) -> HttpRequest:
        """The status request of a job."""

    @abstractmethod
    def parse_status(self, body: Any) -> RemoteStatus:
        """A poll response in canonical form."""

    def cancel(self, handle: Mapping[str, Any]) -> HttpRequest | None:
        """The request that cancels a job, or None where the provider has no cancel."""
        return None

    @abstractmethod
    def download(self, handle: Mapping[str, Any], status: RemoteStatus) -> HttpRequest:
        """The request that fetches the finished video."""

    def result_request(self, handle: Mapping[str, Any]) -> HttpRequest | None:
        """An extra request for the result after the status says done (fal), else None."""
        return None

    def parse_result(self, body: Any, status: RemoteStatus) -> RemoteStatus:
        return status

    def with_idempotency(self, request: HttpRequest, key: str) -> HttpRequest:
        """The submit carrying ``key`` so that repeating it cannot create a second job (where the
        provider honours one; ``supports_idempotency`` says so)."""
        return request

    def recover_submit(self, idempotency_key: str) -> HttpRequest | None:
        """A request that finds a job submitted with ``idempotency_key`` (crash mid-submit), if any."""
        return None

    # -- errors ----------------------------------------------------------------------------------
    def error_text(self, body: bytes) -> tuple[str | None, str]:
        """(code, message) from an error response body, in this provider's error shape."""
        try:
            data = json.loads(body.decode("utf-8", "replace"))
        except ValueError:
            return None, body.decode("utf-8", "replace").strip()[:300]
        return generic_error(data)

    def retryable(self, status: int, code: str | None, message: str) -> bool:
        """Whether an HTTP error may succeed when repeated (408, 429 and 5xx by default)."""
        if status == 429 and self.is_out_of_credits(code, message):
            return False
        return status in (408, 429) or status >= 500

    def is_out_of_credits(self, code: str | None, message: str) -> bool:
        text = f"{code or ''} {message}".lower()
        return any(w in text for w in ("insufficient_quota", "credit", "balance", "billing", "quota exceeded"))

    def is_content_rejection(self, code: str | None, message: str) -> bool:
        text = f"{code or ''} {message}".lower()
        return any(w in text for w in ("moderation", "content_policy", "content policy", "safety", "nsfw"))

    def http_error(self, status: int, body: bytes, what: str) -> VideoApiError:
        """The typed error for an HTTP error answer (retries already spent where retryable)."""
        code, message = self.error_text(body)
        where = f"{self.title} {what}"
        detail = f": {message.rstrip('.')}" if message else ""
        if status in (401, 403) and not self.is_content_rejection(code, message):
            return AuthError(f"{where} refused the API key (HTTP {status}){detail}. Check {self.key_variable()}.",
                             provider=self.title, code=code)
        if status == 402 or self.is_out_of_credits(code, message):
            return OutOfCreditsError(f"{where}: the account is out of credits or quota (HTTP {status}){detail}",
                                     provider=self.title, code=code)
        if self.is_content_rejection(code, message):
            return ContentRejectedError(f"{where}: content rejected by the provider's moderation{detail}",
                                        provider=self.title, code=code)
        if status == 429:
            return RateLimitedError(f"{where}: still rate limited after retrying (HTTP 429){detail}",
                                    provider=self.title, code=code)
        if status >= 500:
            return ProviderUnavailableError(f"{where}: the service is failing (HTTP {status}){detail}",
                                            provider=self.title, code=code)
        return InvalidRequestError(f"{where} rejected the request (HTTP {status}){detail}",
                                   provider=self.title, code=code)


def generic_error(data: Any) -> tuple[str | None, str]:
    """(code, message) from the usual error shapes: ``{"error": "…"}``, ``{"error": {code, message}}``,
    ``{"detail": […]}`` (FastAPI / fal), ``{"code": n, "message": "…"}`` (Kling)."""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, str):
            return None, err
        if isinstance(err, dict):
            code = err.get("code") or err.get("status") or err.get("type")
            return (None if code is None else str(code)), str(err.get("message") or err)
        detail = data.get("detail")
        if isinstance(detail, list) and detail:
            first = detail[0] if isinstance(detail[0], dict) else {"msg": str(detail[0])}
            loc = ".".join(str(x) for x in first.get("loc", []) if x != "body")
            msg = first.get("msg") or str(first)
            return first.get("type"), f"{loc}: {msg}" if loc else str(msg)
        if isinstance(detail, str):
            return None, detail
        if "message" in data:
            code = data.get("code")
            return (None if code is None else str(code)), str(data["message"])
    return None, str(data)[:300]
